"""Serving computations over a batch of users, each vmapped from the
one-user function of `compute`, and `UserBatches`, the methods through
which `Export` offers them to a server.

Every argument but the (meta-)parameters and the item tables has a leading
user axis `[B]`. `Export` jits these with its model and config bound; a
server pads B (and the other sizes) to a few buckets so that it runs
programs compiled at start-up.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax import meta
from metarec_jax.data import implicit
from metarec_jax.data.tasks import FeatureTables, bucket_widths
from metarec_jax.export import compute, layout
from metarec_jax.models import Recommender

PyTree = Any
FOUND_ROWS = 1 << 20  # rows whose `uncounted` bit `row_flags` keeps


def adapt_users(model: Recommender, config: meta.MetaConfig, params: PyTree,
                inner: PyTree | None, support: PyTree
                ) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
  """(`{path: [B, ...]}` the adapted leaves of each user of `support`,
  `bool [B]` whether they are finite and predict finite ratings of the
  user's own support: `compute.support_finite`, the export's check, and
  `bool [B]` whether any of its support rows counts: `compute.counts`)."""

  def one(s):
    fast = compute.adapt_leaves(model, config, params, inner, s)
    return (fast, compute.support_finite(model, params, fast, s),
            compute.counts(model, config, params, s))

  return jax.vmap(one)(support)


def score_users(model: Recommender, params: PyTree,
                fast: dict[str, jax.Array], user_features: dict[str, jax.Array],
                item_tables: dict[str, jax.Array],
                index: jax.Array) -> jax.Array:
  """`[B, N]`: each user's predicted ratings of the items `index [B, N]`."""

  def one(f, u, idx):
    items = {n: t[idx] for n, t in item_tables.items()}
    return compute.score_items(model, params, f, u, items)

  return jax.vmap(one)(fast, user_features, index)


def top_k_users(model: Recommender, params: PyTree,
                fast: dict[str, jax.Array], user_features: dict[str, jax.Array],
                item_tables: dict[str, jax.Array], excluded: jax.Array, *,
                k: int) -> tuple[jax.Array, jax.Array]:
  """Each user's `k` best items of the whole catalogue but `excluded`.

  Args:
    excluded: bool `[B, I]`: items a user must not get (rated ones).

  Returns:
    (scores f32 [B, k], item positions int32 [B, k]), best first by the
    model's scores (`compute.rank_items`), the served ratings; -inf
    scores and position -1 past a user's candidates; the lower position
    first among equal scores. The catalogue is scanned in blocks of
    `RANKED_PAIRS // B` items (`compute.top_k_scan`): scored in one piece,
    a batch of 16 users of a 1M-item catalogue held 16 GB of activations.
  """
  users, num_items = excluded.shape
  blocks, index = compute.catalogue_blocks(
      item_tables, num_items, jnp,
      max(compute.ITEM_BLOCK, compute.RANKED_PAIRS // max(users, 1)))
  count, block = index.shape
  excluded = jnp.pad(excluded, ((0, 0), (0, count * block - num_items)),
                     constant_values=True).reshape(users, count, block)

  def one(f, u, ex):
    served, pos, _ = compute.top_k_scan(model, params, f, u, blocks, index,
                                        ex, k)
    return served, pos

  return jax.vmap(one)(fast, user_features, excluded)


class UserBatches:
  """`Export`'s entry points for a server: every argument has a leading
  user axis [B]; one device call serves the whole batch (vmapped), and a
  program is compiled per distinct shape, so callers pad to a few sizes."""

  # pylint: disable=no-member  (the attributes are `Export`'s)

  def known_ratings(self, row: int) -> tuple[np.ndarray, np.ndarray]:
    """An exported user's known ratings, oldest first: (catalogue positions
    int64, ratings float32)."""
    lo, hi = int(self.rated_offsets[row]), int(self.rated_offsets[row + 1])
    support = lo + int(self.support_sizes[row])
    order = np.r_[support:hi, lo:support]  # the older ones, then the support
    return (np.asarray(self.rated_items[order], np.int64),
            np.asarray(self.rated_ratings[order], np.float32))

  @property
  def meta_leaves(self) -> dict[str, np.ndarray]:
    """`{path: float32}`: the adapted leaves' meta-parameter values (the
    model of a user with no ratings)."""
    return self._meta_fast

  @functools.cached_property
  def rated_ratings(self) -> np.ndarray:
    return self._load("rated_ratings.npy")

  def row_flags(self, row: int) -> int:
    """`flags.npy`'s bits of an exported user, with `layout.UNCOUNTED`
    found where the export predates that bit (its manifest's `flags` lacks
    it, so its flags never say so): from `compute.counts` of the row's
    stored support set, one small device call, as the export would have."""
    found = self._found.get(row)  # one read: another thread may clear it
    if found is not None:
      return found
    if self.knows_flags(row):
      return int(self.flags[row])
    size, lo = int(self.support_sizes[row]), int(self.rated_offsets[row])
    support = self.one_support(
        {n: np.asarray(t[row]) for n, t in self.user_features.items()},
        self.rated_items[lo:lo + size], self.rated_ratings[lo:lo + size])
    counts = self._counts(self._params, support)
    if len(self._found) >= FOUND_ROWS:  # bounded: found again when asked
      self._found.clear()
    self._found[row] = int(self.flags[row]) | (
        0 if bool(counts[0]) else layout.UNCOUNTED)
    return self._found[row]

  def row_personal(self, row: int) -> bool:
    """`UserModel.personal` of an exported user (`row_flags`)."""
    return not self.row_flags(row) & layout.IMPERSONAL

  def knows_flags(self, row: int) -> bool:
    """Whether `row_flags(row)` needs no device call."""
    return (self._flags_count or row in self._found
            or bool(self.flags[row] & layout.NO_RATINGS))

  @functools.cached_property
  def _flags_count(self) -> bool:
    """Whether `flags.npy` holds the `uncounted` bit (written since)."""
    return "uncounted" in self.manifest.get("flags", {})

  def warm_row_flags(self) -> int:
    """Compiles what `row_flags` runs for every support width of the
    export, where it predates the bit (so no request waits for a
    compile); returns how many widths were run."""
    if self._flags_count or not self.num_users:
      return 0
    widths = np.unique(bucket_widths(np.arange(1, self.max_support + 1),
                                     self.buckets))
    features = {n: np.asarray(t[0]) for n, t in self.user_features.items()}
    for width in widths:
      self._counts(self._params, self.one_support(
          features, np.zeros(int(width), np.int64),
          np.full(int(width), self.rating_range[1], np.float32)))
    return len(widths)

  @functools.cached_property
  def _found(self) -> dict[int, int]:
    """`row_flags` found on the device, per row (an old export's)."""
    return {}

  @functools.cached_property
  def _counts(self):
    model, config = self.model, self.meta_config
    return jax.jit(lambda params, support: jax.vmap(
        lambda s: compute.counts(model, config, params, s))(support))

  def table_features_of(self, user_id) -> dict[str, np.ndarray]:
    """The user table's feature row of `user_id` (the missing index 0 for
    an id not in the table)."""
    return self._table_features(user_id)[0]

  def support_batch(self, user_features: dict[str, np.ndarray],
                    items: np.ndarray, ratings: np.ndarray,
                    mask: np.ndarray, rated: np.ndarray | None = None
                    ) -> dict:
    """The support batch `adapt_users` takes.

    Args:
      user_features: `{name: [B(, L)]}` each user's feature row.
      items: `[B, W]` catalogue positions; ratings `[B, W]`; mask `[B, W]`
        (False: padding).
      rated: `[B, R]` every item each user rated (-1: padding), older ones
        beyond the support included: an implicit export never samples one
        as a negative (as `metarec export` and `Export.adapt`). None: the
        support items only.

    An implicit export's batch is wider: `W * (1 + negatives)` rows (see
    `data.implicit.labelled_support`).
    """
    tables = FeatureTables(self._tables.specs, user_features,
                           self._tables.item)
    if getattr(self, "implicit", None) is not None:
      # Implicit exports: labels from the threshold, then sampled negatives
      # that avoid the support items (as `metarec export` adapts).
      items, ratings, mask = implicit.labelled_support(
          items, ratings, mask,
          np.where(mask, items, -1) if rated is None else rated,
          spec=self.implicit, pool=self._implicit_pool,
          num_items=self.num_items,
          # Keyed by the support, as `Export.adapt` draws for one user:
          # never by the row in a batch (a server would adapt a user
          # differently after a restart).
          row_keys=implicit.support_keys(items, mask))
    return tables.rows(np.arange(len(items)), items, ratings, mask)

  def one_support(self, user_features: dict[str, np.ndarray],
                  items: np.ndarray, ratings: np.ndarray,
                  rated: np.ndarray | None = None) -> dict:
    """`support_batch` of one user: its feature row, its support set's
    catalogue positions and ratings (padded to the export's bucket width,
    as `metarec export` pads it), and every item it rated (default: the
    support's)."""
    size = len(items)
    width = int(bucket_widths(np.array([size]), self.buckets)[0])
    positions = np.zeros((1, width), np.int64)
    positions[0, :size] = items
    values = np.zeros((1, width), np.float32)
    values[0, :size] = ratings
    return self.support_batch(
        {n: np.asarray(v)[None] for n, v in user_features.items()},
        positions, values, (np.arange(width) < size)[None],
        None if rated is None else np.asarray(rated, np.int64)[None])

  def adapt_users(self, support: dict
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(`{path: float32 [B, ...]}` each user's leaves adapted from the
    meta-parameters on its row of `support` (see `support_batch`), `bool
    [B]` whether that model is finite: a diverged inner loop's leaves
    must never be served, as `metarec export` never stores them, and
    `bool [B]` whether its ratings count at all: false where the model
    leaves every one out (`compute.counts`), and the user is served
    as one without ratings)."""
    fast, finite, counts = jax.device_get(
        self._adapt_users(self._params, self._inner, support))
    return ({p: np.asarray(v) for p, v in fast.items()}, np.asarray(finite),
            np.asarray(counts))

  def score_users(self, fast: dict[str, np.ndarray],
                  user_features: dict[str, np.ndarray],
                  index: np.ndarray) -> np.ndarray:
    """`float32 [B, N]`: each user's predicted ratings of its row of
    catalogue positions `index [B, N]`."""
    return np.asarray(self._score_users(self._params, fast, user_features,
                                        self._item_tables, index))

  def top_k_users(self, fast: dict[str, np.ndarray],
                  user_features: dict[str, np.ndarray],
                  excluded: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each user's `k` best items of the catalogue but `excluded [B, I]`
    (bool): (scores float32 [B, k] best first, catalogue positions int32
    [B, k]); -inf where a user has fewer than k candidates. Ties go to the
    lower position."""
    scores, index = self._top_k_users(self._params, fast, user_features,
                                      self._item_tables, excluded, k=k)
    return np.asarray(scores), np.asarray(index)

