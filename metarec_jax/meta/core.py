"""The functional core: inner loop, task loss, meta-loss, meta-gradient.

Every function is pure and written for one task; `meta_loss` vmaps over the
leading task axis. A task is `{"support": batch, "query": batch}` where a
batch is whatever `loss_fn(params, batch)` reads; the core never looks
inside it. Padding is the loss function's business: a masked mean whose
denominator is `max(count, 1)` makes an empty support set give a zero
gradient, so such a task adapts to its starting parameters.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from metarec_jax.meta import inner as inner_lib
from metarec_jax.meta import linear_head
from metarec_jax.meta import paths
from metarec_jax.meta.config import MetaConfig

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]


def _batch_loss(loss_fn: LossFn, part: paths.Partition,
                batch: PyTree) -> Callable[[dict], jax.Array]:
  """`fast -> loss_fn(merge(fast), batch)`, with fixed features hoisted."""
  if (isinstance(loss_fn, linear_head.LinearHead)
      and loss_fn.features_fixed(part)):
    x = loss_fn.featurize(part.merge(part.adapted), batch)
    return lambda fast: loss_fn.head_from_features(part.merge(fast), x, batch)
  return lambda fast: loss_fn(part.merge(fast), batch)


def _run_inner(support_loss: Callable[[dict], jax.Array], fast: dict,
               config: MetaConfig, inner: PyTree | None,
               query_loss: Callable[[dict], jax.Array] | None = None):
  """`inner_steps` optax steps on the adapted leaves, as one `lax.scan`.

  Returns:
    (adapted leaves, the weighted multi-step query loss or None).
  """
  opt = inner_lib.inner_optimizer(config, inner)
  msl = bool(config.msl_weights) and query_loss is not None

  def step(carry, weight):
    fast, opt_state = carry
    grads = jax.grad(support_loss)(fast)
    if not config.second_order:
      grads = jax.lax.stop_gradient(grads)
    updates, opt_state = opt.update(grads, opt_state, fast)
    fast = optax.apply_updates(fast, updates)
    out = weight * query_loss(fast) if msl else None
    return (fast, opt_state), out

  if config.remat:
    step = jax.checkpoint(step)
  weights = jnp.asarray(config.msl_weights if msl else
                        [0.0] * config.inner_steps, jnp.float32)
  (fast, _), per_step = jax.lax.scan(step, (fast, opt.init(fast)), weights,
                                     unroll=config.unroll)
  return fast, (jnp.sum(per_step) if msl else None)


def adapt(loss_fn: LossFn, params: PyTree, support: PyTree, *,
          config: MetaConfig, inner: PyTree | None = None) -> PyTree:
  """Adapts `params` to one task's support set.

  Args:
    loss_fn: `(params, batch) -> scalar`.
    params: the meta-parameters (any pytree).
    support: one task's support batch.
    config: the algorithm.
    inner: learned inner-loop parameters (`init_inner`), None for MAML.

  Returns:
    The adapted parameters: same structure as `params`; leaves not matched by
    `config.adapt` are returned unchanged.
  """
  part = paths.partition(params, config.adapt)
  if (isinstance(loss_fn, linear_head.LinearHead)
      and loss_fn.dual_applies(config, part)):
    return linear_head.adapt_dual(loss_fn, part, support, config=config,
                                  inner=inner)
  fast, _ = _run_inner(_batch_loss(loss_fn, part, support), part.adapted,
                       config, inner)
  return part.merge(fast)


def task_loss(loss_fn: LossFn, params: PyTree, task: PyTree, *,
              config: MetaConfig, inner: PyTree | None = None) -> jax.Array:
  """Query loss of one task after adapting on its support set.

  With `config.msl_weights` (MAML++) it is the weighted sum of the query
  losses after every inner step.
  """
  part = paths.partition(params, config.adapt)
  if (isinstance(loss_fn, linear_head.LinearHead)
      and loss_fn.dual_applies(config, part)):
    return linear_head.task_loss_dual(loss_fn, part, task, config=config,
                                      inner=inner)
  query_loss = _batch_loss(loss_fn, part, task["query"])
  fast, msl = _run_inner(_batch_loss(loss_fn, part, task["support"]),
                         part.adapted, config, inner, query_loss)
  return msl if msl is not None else query_loss(fast)


def meta_loss(loss_fn: LossFn, params: PyTree, tasks: PyTree, *,
              config: MetaConfig, inner: PyTree | None = None) -> jax.Array:
  """Mean `task_loss` over the leading task axis of `tasks` (vmapped).

  `jax.grad(meta_loss, argnums=1)` is the exact meta-gradient: with
  `config.second_order` it includes the terms through the inner updates.
  """
  losses = jax.vmap(
      lambda task: task_loss(loss_fn, params, task, config=config,
                             inner=inner))(tasks)
  return jnp.mean(losses)


def meta_grad(loss_fn: LossFn, meta_params: PyTree, tasks: PyTree, *,
              config: MetaConfig) -> tuple[jax.Array, PyTree]:
  """The meta-loss and the update direction of `meta_params`.

  Args:
    loss_fn: `(params, batch) -> scalar`.
    meta_params: `{"model": params, "inner": inner}`.
    tasks: a batch of tasks (leading task axis on every leaf).
    config: the algorithm.

  Returns:
    `(loss, grads)` with `grads` shaped like `meta_params`. For the
    gradient-based algorithms `grads` is `jax.grad` of `meta_loss`; for
    Reptile, which has no such loss, it is the mean of `params - adapted`
    (so that a descent step moves towards the adapted parameters) and `loss`
    is the mean query loss after adaptation.
  """
  if config.learns_inner and meta_params.get("inner") is None:
    raise ValueError(f"meta.algorithm={config.algorithm} needs"
                     " meta_params['inner'] = init_inner(params, config=...)")
  if config.algorithm == "reptile":
    params = meta_params["model"]

    def per_task(task):
      adapted = adapt(loss_fn, params, task["support"], config=config)
      loss = loss_fn(adapted, task["query"])
      return loss, jax.tree.map(jnp.subtract, params, adapted)

    losses, deltas = jax.vmap(per_task)(tasks)
    grads = jax.tree.map(lambda d: jnp.mean(d, axis=0), deltas)
    grads = jax.lax.stop_gradient(grads)
    return jnp.mean(losses), {"model": grads, "inner": None}

  def objective(mp):
    return meta_loss(loss_fn, mp["model"], tasks, config=config,
                     inner=mp["inner"])

  return jax.value_and_grad(objective)(
      {"model": meta_params["model"], "inner": meta_params.get("inner")})
