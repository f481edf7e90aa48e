"""One user's model of a loaded export: `predict(item_ids)`, `recommend(k)`.

`Export.user`, `Export.adapt` and the serving engine hand these out; the
device calls are the export's (`Export._scores`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from metarec_jax.export import layout

if TYPE_CHECKING:  # the export hands out its users: no import at run time
  from metarec_jax.export.serving import Export


class UserModel:
  """One user's model: `predict(item_ids)` and `recommend(k)`.

  Attributes:
    user_id: the user's external id (None for an anonymous `adapt`).
    source: `export`, `meta` or `adapted` (see the module docstring).
    known: the user was exported (`source == "export"`).
    flags: `layout.FLAGS` bits (for `adapted`: those the same ratings would
      get at export time).
    personal: whether the user's ratings shaped the model (see below).
    support_size: ratings the parameters were adapted on.
    skipped_items: `adapt`'s ratings of items not in the catalogue.
    fast: `{path: float32 array}`, the user's adapted leaves.
  """

  def __init__(self, export: "Export", user_id: Any, *, source: str,
               fast: dict[str, np.ndarray],
               user_features: dict[str, np.ndarray], rated: np.ndarray,
               flags: int = 0, support_size: int = 0, skipped_items: int = 0):
    self.export = export
    self.user_id = user_id
    self.source = source
    self.fast = fast
    self.user_features = user_features
    self.rated = np.asarray(rated, np.int64)
    self.flags = int(flags)
    self.support_size = int(support_size)
    self.skipped_items = int(skipped_items)

  @property
  def known(self) -> bool:
    return self.source == "export"

  @property
  def personal(self) -> bool:
    """Whether the user's own ratings shaped the model: false for the
    meta-parameters' model, a user without ratings, and one whose every
    rating the model leaves out (`layout.UNCOUNTED`: fewer than its
    validated `warm_min_support`, or new items' alone, fewer than its
    `new_item_min_support`, or a config that adapts nothing), who is
    served as a user without ratings."""
    return self.source != "meta" and not self.flags & layout.IMPERSONAL

  def predict(self, item_ids: Sequence, *, clip: bool = False) -> np.ndarray:
    """Predicted ratings `float32[len(item_ids)]` of the items.

    Raises:
      KeyError: an item id is not in the catalogue.
    """
    scores = self.export._scores(self, self.export.item_index(item_ids))  # pylint: disable=protected-access
    if clip:
      lo, hi = self.export.rating_range
      scores = np.clip(scores, lo, hi)
    return scores

  def recommend(self, k: int, candidates: Sequence | None = None
                ) -> list[tuple[Any, float]]:
    """The `k` best items not rated by the user, best first.

    Args:
      k: how many (fewer when there are fewer candidates).
      candidates: item ids to choose from (default: the whole catalogue).

    Returns:
      `[(item_id, score), ...]`; ties go to the item listed first in the
      catalogue.

    Raises:
      ValueError: `k` is not a whole number >= 0.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
      raise ValueError(f"k must be a whole number >= 0, got {k!r}")
    e = self.export
    if candidates is None:
      index = np.arange(e.num_items, dtype=np.int64)
    else:
      index = np.unique(e.item_index(candidates))
    index = index[~np.isin(index, self.rated)]
    if not len(index) or k <= 0:
      return []
    scores = e._scores(self, index)  # pylint: disable=protected-access
    best = np.lexsort((index, -scores))[:k]
    ids = e.item_ids[index[best]].tolist()
    return list(zip(ids, scores[best].astype(float).tolist()))
