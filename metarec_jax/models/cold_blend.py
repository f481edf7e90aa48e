"""What a model without an anchor serves a user without ratings
(`model.cold_blend`): the validated cold blend.

MAML trains the meta-parameters as a start for adaptation, not as
predictions: the plain MeLU of MovieLens-1M's config predicts a user
without ratings worse than the training mean rating does (validation MAE
1.07 against 0.93-0.95 for existing items, 1.12-1.14 against 0.94-0.95
for new ones, seeds 0-2). The anchored models serve such a
user their validated cold shares (`models.anchored`); a plain model, with
no baseline inside it to fall back to, serves

    level + factor[kind] * (prediction - level)

where `level` is the model's start (the training mean rating, the output
bias's initial value) and `factor` is fitted, per kind of item (0: items
with training ratings, 1: the others, by the median map's kind table where
the model reads item IDs; otherwise row 0 for every item), to the
validation users' predictions before adaptation as served
(`train.cold_factors`): at 0 the global mean itself, at 1 the
meta-parameters as trained, each then through the median map where the
model has one (fitted to adapted predictions, before the factors).

Who is such a user is told by `warm`, an adapted scalar at 0 in the
meta-parameters, as in the anchored models: the support loss gains
`-warm` where the support set has a rating (`with_warm_term`), so any inner
step moves it off 0 and an empty support set leaves it at exactly 0. Its
term is linear and reads no other leaf: the other leaves' gradients and
the inner loop's fit are those without it; the query loss and every
prediction the losses see are the module's own (the blend is served only:
`Recommender.predict`), and the meta-gradient of `warm` is zeroed
(`meta_fixed`).

With `model.warm_min_support=validated` the model also holds the fewest
support ratings that count, as the anchored models do: a support set with
fewer counts as empty (its rows leave the support loss, `warm` stays 0),
so its user is served as one without ratings. Likewise, where the model
reads item IDs (the kind table), `model.new_item_min_support=validated`:
the fewest support ratings of new items that count (fewer: those rows
leave the support loss, the others count). Training uses 1 for both; each
validation fits them (`train.min_support`), for on MovieLens-1M the plain
MeLU adapted to one rating, or to two ratings of new items, predicted
worse than the blend serves a new visitor (docs/results.md).

Parameters (top level, beside the module's):

    cold_factor       [2]  (1, 1: the identity; validated, no gradient)
    cold_level        []   the training mean rating (fixed)
    warm              []   (adapted; meta-value fixed at 0)
    warm_min_support  []   (1; validated, no gradient; only with
                            model.warm_min_support=validated)
    new_item_min_support  []  (1; likewise, with the kind table and
                               model.new_item_min_support=validated)
    median_kind  [items + 1]  where the model reads item IDs and has no
                              median map to hold it (`models.calibration`)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax.data.schema import ITEM_ID
from metarec_jax.meta import LinearHead
from metarec_jax.models.calibration import MEDIAN_KIND

PyTree = Any

# 0 in the meta-parameters, moved off 0 by any counted support rating: the
# anchored models' too (`anchored_loss`).
WARM = "warm"
COLD_FACTOR = "cold_factor"  # [existing items, new items]
COLD_LEVEL = "cold_level"
# The fewest support ratings that count at all, and of new items (validated;
# the anchored models' too).
WARM_MIN_SUPPORT = "warm_min_support"
NEW_ITEM_MIN_SUPPORT = "new_item_min_support"
BLENDS = ("validated", "none")  # `model.cold_blend`
# `Recommender.always_adapt` and `meta_fixed` of a blended model.
WARM_PATTERN = f"^{WARM}$"


@dataclasses.dataclass(frozen=True)
class Blend:
  """A model's cold blend: `level`, the training mean rating, and whether
  it holds the validated fewest support ratings that count (`least`) and
  the fewest of new items (`least_new`, with the kind table)."""
  level: float
  least: bool = False
  least_new: bool = False


def initial(blend: Blend, existing: np.ndarray | None,
            has_kinds: bool) -> dict[str, jax.Array]:
  """The blend's parameters as initialised: factors 1 (the identity), the
  level, `warm` 0, the minimum 1 where `blend.least` and, with `existing`
  (per item ID: has training ratings) where the params hold no kind table
  yet (`has_kinds` False), the kind table."""
  params = {COLD_FACTOR: jnp.ones((2,), jnp.float32),
            COLD_LEVEL: jnp.asarray(blend.level, jnp.float32),
            WARM: jnp.zeros((), jnp.float32)}
  if blend.least:
    params[WARM_MIN_SUPPORT] = jnp.ones((), jnp.float32)
  if blend.least_new and (existing is not None or has_kinds):
    params[NEW_ITEM_MIN_SUPPORT] = jnp.ones((), jnp.float32)
  if existing is not None and not has_kinds:
    params[MEDIAN_KIND] = jnp.asarray(existing, jnp.float32)
  return params


def present(params: PyTree) -> bool:
  """Whether model parameters `params` hold a cold blend."""
  return COLD_FACTOR in params


def serve(params: PyTree, prediction: jax.Array,
          item_ids: jax.Array | None) -> jax.Array:
  """`prediction` as served: unchanged where `params["warm"]` is not 0 (an
  adapted user), else blended towards the level by the kind's factor.
  Written as `prediction - (1 - factor) * (prediction - level)`, so that
  the factor 1 (training's, and any validation's start) serves every bit
  of the prediction unchanged."""
  factor = jax.lax.stop_gradient(params[COLD_FACTOR]).astype(prediction.dtype)
  level = jax.lax.stop_gradient(params[COLD_LEVEL]).astype(prediction.dtype)
  chosen = factor[0]
  if MEDIAN_KIND in params and item_ids is not None:
    existing = jax.lax.stop_gradient(params[MEDIAN_KIND])[item_ids] > 0.5
    chosen = jnp.where(existing, factor[0], factor[1])
  blended = prediction - (1.0 - chosen) * (prediction - level)
  return jnp.where(params[WARM] != 0, prediction, blended)


def support_weights(params: PyTree, batch: PyTree) -> jax.Array:
  """Each row of one support set: 1, or 0 for a row of a new item where
  the set holds fewer of them than the validated `new_item_min_support`,
  and 0 for every row where fewer than `warm_min_support` rows are left
  (the user is then served as one without ratings;
  `Recommender.support_weights`)."""
  mask = batch["mask"].astype(jnp.float32)
  rows = jnp.ones(mask.shape, jnp.float32)
  # Counts are whole numbers: half a rating of slack for the float.
  if NEW_ITEM_MIN_SUPPORT in params:
    kinds = jax.lax.stop_gradient(params[MEDIAN_KIND])
    existing = kinds[batch["features"][ITEM_ID]] > 0.5
    new_rows = jnp.sum(jnp.where(existing, 0.0, mask))
    least = jax.lax.stop_gradient(params[NEW_ITEM_MIN_SUPPORT])
    rows = jnp.where(existing | (new_rows >= least - 0.5), rows, 0.0)
  if WARM_MIN_SUPPORT in params:
    count = jnp.sum(rows * mask)
    least = jax.lax.stop_gradient(params[WARM_MIN_SUPPORT])
    rows = jnp.where(count >= least - 0.5, rows, 0.0)
  return rows


def _counted(params: PyTree, batch: PyTree) -> PyTree:
  """`batch` with only the rows that count (`support_weights`)."""
  if WARM_MIN_SUPPORT not in params and NEW_ITEM_MIN_SUPPORT not in params:
    return batch
  keep = support_weights(params, batch) > 0
  return {**batch, "mask": jnp.logical_and(batch["mask"], keep)}


def _warm_term(params: PyTree, batch: PyTree, loss: jax.Array) -> jax.Array:
  """`-warm` where the support set has a rating, in `loss`'s dtype."""
  rated = jnp.any(batch["mask"]).astype(loss.dtype)
  return -rated * params[WARM].astype(loss.dtype)


def with_warm_term(loss_fn: LinearHead | Callable) -> LinearHead | Callable:
  """`loss_fn` (a `LinearHead` or `(params, batch) -> loss`) over the rows
  that count (`support_weights`) with `warm`'s linear term added (see the
  module docstring); a plain function keeps its `rows`
  (`recommender.rows_fn`)."""
  if isinstance(loss_fn, LinearHead):
    head = loss_fn.head

    def warm_head(params, a, batch):
      batch = _counted(params, batch)
      loss = head(params, a, batch)
      return loss + _warm_term(params, batch, loss)
    return dataclasses.replace(loss_fn, head=warm_head)

  def warm_loss(params, batch):
    batch = _counted(params, batch)
    loss = loss_fn(params, batch)
    return loss + _warm_term(params, batch, loss)
  if hasattr(loss_fn, "rows"):
    warm_loss.rows = loss_fn.rows
  return warm_loss
