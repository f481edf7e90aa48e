"""A model as the rest of the engine sees it: init, predict, loss.

Batches of the package's own models are
`{"features": {name: array}, "rating": f32[n], "mask": bool[n]}` (with any
leading axes); the loss is the mean squared error over unmasked rows (or
another of `LOSSES`; for implicit feedback `rating` is the 0/1 label).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from metarec_jax.data.schema import ITEM_ID
from metarec_jax.meta import LinearHead
from metarec_jax.models import calibration, cold_blend

PyTree = Any


RATING_LOSSES = ("mse", "huber")
# Implicit feedback: `batch["rating"]` is the label, 1 (positive) or 0.
RANKING_LOSSES = ("bce", "bpr", "softmax")
LOSSES = RATING_LOSSES + RANKING_LOSSES


def loss_precision(pred: jax.Array) -> jax.Array:
  """`pred` in at least float32: the losses reduce in float32 whatever the
  model computed in (`model.compute_dtype`); float32 and float64 pass
  unchanged."""
  return pred.astype(jnp.promote_types(pred.dtype, jnp.float32))


def masked_loss(pred: jax.Array, batch: PyTree, kind: str = "mse",
                delta: float = 1.0, rank_weight: float = 0.0) -> jax.Array:
  """Mean rating loss over the rows where `batch["mask"]` is set.

  `mse` is the squared error; `huber` is quadratic within `delta` of the
  rating and linear beyond (times 2, so that it equals `mse` for small
  errors): a small `delta` makes the model predict nearer the median
  rating, which is what MAE rewards, while keeping the gradient smooth
  enough for the inner loop. The denominator is at least 1, so an
  all-padding batch has loss 0 and gradient 0. A positive `rank_weight`
  adds that multiple of `listwise_loss` (rating losses only).
  """
  pred = loss_precision(pred)
  if kind in RANKING_LOSSES:
    return ranking_loss(pred, batch, kind)
  mask = batch["mask"].astype(pred.dtype)
  err = row_errors(pred, batch, kind, delta)
  loss = jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  if rank_weight:
    loss = loss + rank_weight * jnp.mean(listwise_loss(pred, batch))
  return loss


# Ratings above this are clipped in the gains: 2^r stays finite in float32.
_MAX_GAIN_EXPONENT = 60.0


def listwise_loss(pred: jax.Array, batch: PyTree) -> jax.Array:
  """ListNet's cross-entropy of each set `[..., n]` against nDCG's gains.

  The target is each row's share of the set's gain 2^rating - 1 (ratings
  clipped to [0, 60]); the model's distribution is the softmax of
  pred * ln 2, so the optimum pred, log2(2^rating - 1) + c, is the rating
  itself for the high ratings that nDCG weighs most: the term agrees with
  the squared error where it matters and only reorders. Padding rows have
  no share; a set without gain has loss 0 and gradient 0 (a finite
  stand-in for -inf keeps every gradient finite).
  """
  pred = loss_precision(pred)
  mask = batch["mask"]
  rating = jnp.clip(batch["rating"].astype(pred.dtype), 0.0,
                    _MAX_GAIN_EXPONENT)
  gain = jnp.where(mask, jnp.exp2(rating) - 1.0, 0.0)
  target = gain / jnp.maximum(jnp.sum(gain, -1, keepdims=True), 1e-30)
  very_low = jnp.asarray(-1e30, pred.dtype)
  logits = jnp.where(mask, pred * jnp.log(2.0).astype(pred.dtype), very_low)
  return -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), -1)


def row_errors(pred: jax.Array, batch: PyTree, kind: str = "mse",
               delta: float = 1.0) -> jax.Array:
  """The per-row rating loss of `masked_loss` (padding rows included)."""
  diff = pred - batch["rating"].astype(pred.dtype)
  if kind == "mse":
    return diff ** 2
  if kind == "huber":
    return 2.0 * optax.huber_loss(diff, delta=delta)
  raise ValueError(f"a rating loss is one of {', '.join(RATING_LOSSES)},"
                   f" not {kind!r}")


def ranking_loss(score: jax.Array, batch: PyTree, kind: str) -> jax.Array:
  """An implicit-feedback loss of one set's scores (logits) `[..., n]`.

  `batch["rating"]` labels the rows 1 (positive) or 0 (negative), padding
  has mask False. `bce`: binary cross-entropy, mean over the rows; `bpr`:
  -log sigmoid(s_pos - s_neg), mean over the set's sampled triples (each
  negative row paired with one positive, taken in turn in row order);
  `softmax`: each positive's cross-entropy against itself and the set's
  negatives (a sampled softmax), mean over the positives. The
  denominators are at least 1, so an empty set (or one without pairs) has
  loss 0 and gradient 0. All three are smooth, so the inner loop's
  second-order terms exist.
  """
  score = loss_precision(score)
  mask = batch["mask"]
  label = batch["rating"].astype(score.dtype)
  pos = mask & (label > 0.5)
  neg = mask & (label <= 0.5)
  f = lambda m: m.astype(score.dtype)
  if kind == "bce":
    err = optax.sigmoid_binary_cross_entropy(score, label)
    return jnp.sum(err * f(mask), -1) / jnp.maximum(jnp.sum(f(mask), -1), 1.0)
  if kind == "bpr":
    # Sampled triples (Rendle et al.): each negative row is one pair, with
    # the positive whose rank among the set's positives is the negative's
    # rank modulo the number of positives, so `r` negatives per positive
    # give each positive `r` pairs. One softplus per row instead of one per
    # (row, row), so the cost grows with the set, not with its square (on
    # melu-ref's implicit step: 0.59 M transcendentals per step instead of
    # 8.58 M). The partner's score is gathered by a 0/1 matrix product,
    # linear and cheap to differentiate.
    num_pos = jnp.sum(pos, -1, keepdims=True, dtype=jnp.int32)
    pos_rank = jnp.cumsum(pos, -1, dtype=jnp.int32) - 1
    partner_rank = (jnp.cumsum(neg, -1, dtype=jnp.int32) - 1) % jnp.maximum(
        num_pos, 1)
    partner = (pos[..., None, :]
               & (pos_rank[..., None, :] == partner_rank[..., :, None]))
    partner_score = jnp.einsum("...ji,...i->...j", f(partner), score)
    pairs = f(neg & (num_pos > 0))
    return (jnp.sum(jax.nn.softplus(score - partner_score) * pairs, -1)
            / jnp.maximum(jnp.sum(pairs, -1), 1.0))
  if kind == "softmax":
    # A large finite stand-in for -inf keeps the gradient finite when a set
    # has no negatives (the positive's loss is then 0).
    very_low = jnp.asarray(-1e30, score.dtype)
    neg_lse = jax.nn.logsumexp(jnp.where(neg, score, very_low), axis=-1,
                               keepdims=True)
    err = jnp.logaddexp(score, neg_lse) - score
    return (jnp.sum(err * f(pos), -1)
            / jnp.maximum(jnp.sum(f(pos), -1), 1.0))
  raise ValueError(f"unknown ranking loss {kind!r}; one of"
                   f" {', '.join(RANKING_LOSSES)}")


@dataclasses.dataclass(frozen=True)
class Recommender:
  """A flax module with what training, evaluation and export need.

  Attributes:
    name: the `model.name` it was built from.
    module: the flax module; `module.apply({"params": p}, features)`
      returns predicted ratings.
    loss_fn: `(params, batch) -> scalar` for the functional core (a
      `LinearHead` where the model has that structure).
    query_loss_fn: the loss of the query sets, when it differs (None: the
      same as `loss_fn`).
    adapt: the default `meta.adapt` patterns (what the paper adapts).
    example_features: a one-row feature dict used to initialise.
    meta_fixed: patterns of parameters the meta-update never moves (their
      meta-gradient is zeroed): ones the inner loop sets from any start,
      whose meta-gradient carries no signal.
    always_adapt: patterns the inner loop adapts whatever `meta.adapt`
      says (`experiment.meta_config` adds them): bookkeeping, not a fit
      (the anchored models' `warm`, which a user's support ratings must
      move for the cold shares to serve only users without any).
    median_map: `model.calibration=median`: the parameters hold the median
      map and `predict` serves through it (`models.calibration`).
    existing_items: per item ID, whether the item has training ratings:
      the kind table of the median map and the cold blend as initialised
      (`calibration.MEDIAN_KIND`); None where the model does not read item
      IDs (one row of either for every item).
    support_weights: `(params, batch) -> [rows]` each support row's weight
      in the support loss, where the model leaves some rows out (the
      validated minima: `Anchor.support_weights`,
      `cold_blend.support_weights`); None: every row counts.
    blend: `model.cold_blend=validated`: the level (the training mean
      rating) towards which `predict` blends the predictions of a user
      without ratings, and whether the model holds the fewest ratings that
      count (`models.cold_blend`); None: no blend.
  """

  name: str
  module: nn.Module
  loss_fn: Callable[[PyTree, PyTree], jax.Array]
  adapt: tuple[str, ...]
  example_features: dict[str, jax.Array]
  query_loss_fn: Callable[[PyTree, PyTree], jax.Array] | None = None
  meta_fixed: tuple[str, ...] = ()
  always_adapt: tuple[str, ...] = ()
  median_map: bool = False
  existing_items: Any = dataclasses.field(default=None, compare=False)
  support_weights: Callable[[PyTree, PyTree], jax.Array] | None = None
  blend: cold_blend.Blend | None = None

  def init(self, rng: jax.Array) -> PyTree:
    """Fresh parameters (the `params` collection, with the identity median
    map and cold blend where the model has them)."""
    params = self.module.init(rng, self.example_features)["params"]
    if self.median_map:
      params = {**params, **calibration.identity(self.existing_items)}
    if self.blend is not None:
      params = {**params, **cold_blend.initial(
          self.blend, self.existing_items, calibration.per_kind(params))}
    return params

  def predict(self, params: PyTree, features: dict[str, jax.Array]) -> jax.Array:
    """The served predictions: the module's, for a user without ratings
    blended where the model has a cold blend, then through the median map
    where it has one (the losses use the module's own)."""
    return self.predict_ranked(params, features)[0]

  def predict_ranked(self, params: PyTree, features: dict[str, jax.Array]
                     ) -> tuple[jax.Array, jax.Array]:
    """`(served predictions, the scores that rank the items)`: the served
    ones before the median map. The map is monotone for each kind of item,
    but two kinds may be served two maps (one kept, one the identity), and
    through them an item of one kind could outrank every item of the
    other: a top-k ranks the model's own scores, and shows the served
    ratings (with one map for both kinds, the same order). Likewise the
    cold blend (`models.cold_blend`), whose factor 0 would tie every
    item."""
    prediction = self.predict_unmapped(params, features)
    served = prediction
    if self.blend is not None:
      served = cold_blend.serve(params, served, features.get(ITEM_ID))
    if self.median_map:
      served = calibration.serve(params, served, features.get(ITEM_ID))
    return served, prediction

  def predict_unmapped(self, params: PyTree,
                       features: dict[str, jax.Array]) -> jax.Array:
    """The module's own predictions: what the losses fit (no median map)."""
    return self.module.apply({"params": params}, features)

  def counts(self, params: PyTree, support: PyTree) -> jax.Array:
    """Whether one task's support rows move its adaptation at all (bool
    scalar): false for an empty support set, and for one whose every row
    the model leaves out (`support_weights` 0: fewer ratings than an
    anchored model's validated `warm_min_support`, or ratings of new items
    alone, fewer than its `new_item_min_support`), whose user is served
    the model of a user without ratings."""
    rows = support["mask"]
    if self.support_weights is not None:
      rows = rows & (self.support_weights(params, support) > 0)
    return jnp.any(rows)

  def example_batch(self) -> PyTree:
    """A one-row batch (padding) in the core's batch format."""
    return {"features": self.example_features,
            "rating": jnp.zeros((1,), jnp.float32),
            "mask": jnp.zeros((1,), bool)}


def rows_fn(module: nn.Module) -> Callable[[PyTree, PyTree], tuple]:
  """`rows(params, batch) -> (module.featurize(features), rating, mask)`:
  the support rows as the encoding algorithms read them (`meta.encoder`)."""

  def rows(params, batch):
    x = module.apply({"params": params}, batch["features"],
                     method="featurize")
    return x, batch["rating"], batch["mask"]

  return rows


def linear_head_loss(module: nn.Module, *, kernel: str, bias: str,
                     featurize_reads: tuple[str, ...], loss: str = "mse",
                     delta: float = 1.0,
                     rank_weight: float = 0.0) -> LinearHead:
  """The `LinearHead` loss of a module with `featurize`/`from_preactivation`
  (`masked_loss`'s arguments)."""

  def featurize(params, batch):
    return module.apply({"params": params}, batch["features"],
                        method="featurize")

  return LinearHead(featurize=featurize,
                    head=_head(module, loss, delta, rank_weight),
                    kernel=kernel, bias=bias, featurize_reads=featurize_reads,
                    rows=rows_fn(module))


def _head(module: nn.Module, loss: str, delta: float,
          rank_weight: float = 0.0):
  # A module with a per-item prior (MeLU's popularity) adds it here: it
  # reads no adapted parameter, so the dual form stays exact.
  prior = getattr(module, "popularity_init", None) is not None

  def head(params, a, batch):
    pred = module.apply({"params": params}, a, method="from_preactivation")
    if prior:
      pred = pred + module.apply({"params": params}, batch["features"],
                                 method="prior")
    return masked_loss(pred, batch, loss, delta, rank_weight)
  return head


def with_loss(lh: LinearHead, module: nn.Module, loss: str,
              delta: float, rank_weight: float = 0.0) -> LinearHead:
  """The same `LinearHead` (same features: the dual form still applies) with
  another rating loss (`masked_loss`'s arguments)."""
  return dataclasses.replace(lh, head=_head(module, loss, delta, rank_weight))


def plain_loss(module: nn.Module, loss: str = "mse", delta: float = 1.0,
               rank_weight: float = 0.0
               ) -> Callable[[PyTree, PyTree], jax.Array]:
  """`(params, batch) -> masked loss of module.apply(params, features)`
  (`masked_loss`'s arguments).

  Where the module has `featurize`, the function carries `rows` (see
  `rows_fn`) for the encoding algorithms.
  """

  def loss_fn(params, batch):
    return masked_loss(module.apply({"params": params}, batch["features"]),
                       batch, loss, delta, rank_weight)

  if hasattr(module, "featurize"):
    loss_fn.rows = rows_fn(module)
  return loss_fn
