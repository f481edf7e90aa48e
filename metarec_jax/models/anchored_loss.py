"""The support loss of the anchored models (`models.anchored`): what the
inner loop fits on a user's support ratings.

Three adapted scalars, each with its own separable term, so that one inner
step sets each whatever the others do:

- `user_bias`, the model's user bias: its shrunk mean residual under the
  learned prior (`prior_loss`);
- `base_bias`, the baseline's own user bias: its shrunk mean residual under
  the baseline's 3 pseudo-ratings;
- `warm` (`model.cold_share=validated`): `-warm` where the support set has
  a rating that counts (`Anchor.support_weights`), so any inner step
  moves it off 0, and an empty support set (the meta-parameters, a user
  without ratings) leaves it at exactly 0, as one whose every rating is
  left out (the user biases and the network keep the meta-values then
  too).
  The model serves its validated cold shares where it is 0. Its term is
  linear (a gradient of -1, whatever its value), so no inner rate makes it
  diverge, and it reads nothing else: the other leaves' gradients are
  those without it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from metarec_jax.data.baselines import USER_PSEUDO
from metarec_jax.models.cold_blend import WARM  # 0 until a rating counts
from metarec_jax.models.recommender import (listwise_loss, loss_precision,
                                            row_errors)

USER_BIAS = "user_bias"
USER_PRIOR = "user_prior"  # log of the user bias's pseudo-ratings
BASE_BIAS = "base_bias"  # the baseline's own user bias
# The two user biases: adapted by every anchored model, and `meta_fixed`.
USER_BIASES = (f"^{USER_BIAS}$", f"^{BASE_BIAS}$")


def bookkeeping(cold_share: bool) -> tuple[str, ...]:
  """`Recommender.always_adapt` of an anchored model: `warm` where it has
  cold shares (`model.cold_share=validated`)."""
  return (f"^{WARM}$",) if cold_share else ()


def adapted_scalars(cold_share: bool) -> tuple[str, ...]:
  """The patterns of an anchored model's adapted scalars, each
  `meta_fixed` at 0: the two user biases and the `bookkeeping`."""
  return USER_BIASES + bookkeeping(cold_share)


def user_bias_scale(inner_lr: float) -> float:
  """The scale `s` of `user_bias`: one SGD step of `inner_lr` on the prior
  loss moves `s * user_bias` by `2 * inner_lr * s^2` times its distance to
  the shrunk mean residual, so `s = 1 / sqrt(2 * inner_lr)` lands on it."""
  return 1.0 / math.sqrt(2.0 * max(float(inner_lr), 1e-6))


def support_rows(module):
  """`(params, batch) -> [rows]`: `Anchor.support_weights` of one support
  batch of the anchored `module` (its `Recommender.support_weights`)."""

  def rows(params, batch):
    return module.apply({"params": params}, batch["features"], batch["mask"],
                        method="support_weights")
  return rows


def prior_loss(pred: jax.Array, batch, user_bias: jax.Array, prior: float,
               err_fn, rows: jax.Array | None = None) -> jax.Array:
  """`(sum of weighted masked errors + prior * user_bias^2) / (n + prior)`,
  `n` the sum of the rows' weights (`rows`, default 1 each).

  Minimised over the user bias alone, it gives the baseline's shrunk mean
  residual `sum(v * (r - pred)) / (n + prior)`. An empty support set has
  loss 0 and gradient 0 (no prior either): it keeps the meta-parameters,
  as with every other loss. `err_fn(pred, batch)` is the per-row error.
  """
  pred = loss_precision(pred)
  mask = batch["mask"].astype(pred.dtype)
  if rows is not None:
    mask = mask * rows.astype(pred.dtype)
  n = jnp.sum(mask)
  weight = prior * (n > 0).astype(pred.dtype)
  total = jnp.sum(err_fn(pred, batch) * mask) + weight * user_bias ** 2
  return total / jnp.where(n > 0, n + weight, 1.0)


def support_loss(params, model: jax.Array, baseline: jax.Array, batch, *,
                 scale: float, kind: str, delta: float,
                 rows: jax.Array | None = None,
                 rank_weight: float = 0.0) -> jax.Array:
  """The support loss of an anchored model: two independent quadratics in
  the two user biases, the model's (its predictions, `kind` loss, the
  learned prior) and the baseline's (its own pseudo-ratings whatever
  `model.user_bias_prior` is, squared error: its shrunk mean residual),
  each row weighted by `rows` (`Anchor.support_weights`), and `warm`'s
  linear term where the model has it (see the module docstring). One
  inner step sets both biases. A positive `rank_weight` adds that multiple
  of the model's `listwise_loss` over the rows that count (weight above
  0), which a shift of the prediction leaves unchanged: it moves the
  network, never a user bias."""
  loss = (prior_loss(model, batch, scale * params[USER_BIAS],
                     jnp.exp(params[USER_PRIOR]),
                     lambda p, b: row_errors(p, b, kind, delta), rows)
          + prior_loss(baseline, batch, scale * params[BASE_BIAS],
                       USER_PSEUDO,
                       lambda p, b: row_errors(p, b, "mse", delta), rows))
  if WARM in params:  # rows that move the biases (all, or none: cut)
    counted = batch["mask"] if rows is None else batch["mask"] * rows
    rated = (jnp.sum(counted) > 0).astype(loss.dtype)
    loss = loss - rated * params[WARM].astype(loss.dtype)
  if rank_weight:  # over the rows that count (none: loss 0, no move)
    ranked = batch if rows is None else {
        **batch, "mask": jnp.logical_and(batch["mask"], rows > 0)}
    loss = loss + rank_weight * jnp.mean(listwise_loss(model, ranked))
  return loss
