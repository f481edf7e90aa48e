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

from metarec_jax.meta import encoder
from metarec_jax.meta import inner as inner_lib
from metarec_jax.meta import linear_head
from metarec_jax.meta import members as members_lib
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
  if not config.inner_steps:  # (a scan of no steps still traces its body,
    return fast, None         # which indexes MAML++'s [0] per-step rates)
  inner_lib.check_rates(config, inner, fast)
  inner_lib.check_adam_dtypes(config, fast)
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
  # The weights take the parameters' precision: float32 weights would round
  # a float64 multi-step loss (and its gradient) to float32's precision.
  leaves = jax.tree.leaves(fast)
  dtype = jnp.result_type(*leaves) if leaves else jnp.float32
  weights = jnp.asarray(config.msl_weights if msl else
                        [0.0] * config.inner_steps, dtype)
  (fast, _), per_step = jax.lax.scan(step, (fast, opt.init(fast)), weights,
                                     unroll=config.unroll)
  return fast, (jnp.sum(per_step) if msl else None)


def _start(loss_fn: LossFn, params: PyTree, support: PyTree,
           config: MetaConfig, inner: PyTree | None) -> PyTree:
  """Where the inner loop starts: the meta-parameters, or for an encoding
  algorithm the meta-parameters modulated by the encoded support set."""
  if not config.spec.encoder:
    return params
  if inner is None:
    raise ValueError(f"meta.algorithm={config.algorithm} learns an encoder:"
                     " pass inner=init_inner(params, config=..., loss_fn=...,"
                     " support=...)")
  return encoder.encode(loss_fn, params, support, config=config, inner=inner)


def _shared_first_layer(loss_fn: LossFn, params: PyTree, config: MetaConfig,
                        inner: PyTree | None,
                        query_loss_fn: LossFn | None) -> Callable | None:
  """The query head with which an encoder without gradient steps scores
  a task from shared first-layer products (`encoder.task_loss_shared`), or
  None where it cannot."""
  if not (inner is not None and isinstance(loss_fn, linear_head.LinearHead)
          and encoder.shares_first_layer(
              loss_fn, paths.partition(params, config.adapt), config)):
    return None
  return loss_fn.query_head(query_loss_fn)


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
    `config.adapt` are returned unchanged. An encoding algorithm
    (`metric`, `amortised`, `hybrid`) starts the inner loop from the
    parameters its encoder computes from `support` (`meta.encoder`). An
    ensemble's loss (`meta.members.Members`) adapts each member alone.
  """
  if isinstance(loss_fn, members_lib.Members):
    loss_fn.check(config, params)
    return loss_fn.each(lambda p: adapt(loss_fn.single, p, support,
                                        config=config, inner=inner),
                        params, out_axes=loss_fn.axes(params))
  params = _start(loss_fn, params, support, config, inner)
  part = paths.partition(params, config.adapt)
  if config.inner_steps:
    paths.check_differentiable(part.adapted, "the adapted parameter")
  if linear_head.dual_form(loss_fn, config, part) is not None:
    return linear_head.adapt_dual(loss_fn, part, support, config=config,
                                  inner=inner)
  fast, _ = _run_inner(_batch_loss(loss_fn, part, support), part.adapted,
                       config, inner)
  return part.merge(fast)


def task_loss(loss_fn: LossFn, params: PyTree, task: PyTree, *,
              config: MetaConfig, inner: PyTree | None = None,
              query_loss_fn: LossFn | None = None) -> jax.Array:
  """Query loss of one task after adapting on its support set.

  With `config.msl_weights` (MAML++) it is the weighted sum of the query
  losses after every inner step. `query_loss_fn` (default `loss_fn`) scores
  the query set, so the inner loop and the meta-objective may use different
  losses (e.g. squared error to adapt, an MAE-like loss to meta-learn).
  An ensemble's loss (`meta.members.Members`) is the sum of its members'.
  """
  if isinstance(loss_fn, members_lib.Members):
    loss_fn.check(config, params)
    query = members_lib.single(query_loss_fn)
    return jnp.sum(loss_fn.each(
        lambda p: task_loss(loss_fn.single, p, task, config=config,
                            inner=inner, query_loss_fn=query), params))
  shared = _shared_first_layer(loss_fn, params, config, inner,
                               query_loss_fn)
  if shared is not None:
    return encoder.task_loss_shared(loss_fn, params, task, config=config,
                                    inner=inner, query_head=shared)
  params = _start(loss_fn, params, task["support"], config, inner)
  part = paths.partition(params, config.adapt)
  query_head = linear_head.dual_form(loss_fn, config, part, query_loss_fn)
  if query_head is not None:
    return linear_head.task_loss_dual(loss_fn, part, task, config=config,
                                      inner=inner, query_head=query_head)
  query_loss = _batch_loss(query_loss_fn or loss_fn, part, task["query"])
  fast, msl = _run_inner(_batch_loss(loss_fn, part, task["support"]),
                         part.adapted, config, inner, query_loss)
  return msl if msl is not None else query_loss(fast)


def meta_loss(loss_fn: LossFn, params: PyTree, tasks: PyTree, *,
              config: MetaConfig, inner: PyTree | None = None,
              query_loss_fn: LossFn | None = None) -> jax.Array:
  """Mean `task_loss` over the leading task axis of `tasks` (vmapped).

  `jax.grad(meta_loss, argnums=1)` is the exact meta-gradient: with
  `config.second_order` it includes the terms through the inner updates.
  """
  losses = jax.vmap(
      lambda task: task_loss(loss_fn, params, task, config=config,
                             inner=inner, query_loss_fn=query_loss_fn))(tasks)
  return jnp.mean(losses)


def meta_grad(loss_fn: LossFn, meta_params: PyTree, tasks: PyTree, *,
              config: MetaConfig, query_loss_fn: LossFn | None = None
              ) -> tuple[jax.Array, PyTree]:
  """The meta-loss and the update direction of `meta_params`.

  Args:
    loss_fn: `(params, batch) -> scalar`.
    meta_params: `{"model": params, "inner": inner}`.
    tasks: a batch of tasks (leading task axis on every leaf).
    config: the algorithm.
    query_loss_fn: the loss of the query sets (default `loss_fn`).

  Returns:
    `(loss, grads)` with `grads` shaped like `meta_params`. For the
    gradient-based and encoding algorithms (`maml`, `metasgd`, `mamlpp`,
    `metric`, `amortised`, `hybrid`) `grads` is
    `jax.grad` of `meta_loss`. For Reptile, which has no such loss, the
    adapted leaves' direction is the mean of `params - adapted` (so that a
    descent step moves towards the adapted parameters), the frozen leaves'
    is the gradient of the query loss at the adapted parameters, and `loss`
    is the mean query loss after adaptation. For `pretrain` it is the
    gradient of the unadapted joint loss (see `MetaConfig`).
  """
  if not isinstance(meta_params, dict) or "model" not in meta_params:
    raise ValueError("meta_grad takes meta_params = {'model': params,"
                     " 'inner': init_inner(...) or None}")
  if config.learns_inner and meta_params.get("inner") is None:
    raise ValueError(f"meta.algorithm={config.algorithm} needs"
                     " meta_params['inner'] = init_inner(params, config=...)")
  paths.check_differentiable(meta_params["model"], "the parameter")
  query_loss_fn = query_loss_fn or loss_fn
  if config.spec.update == "reptile":
    return _reptile(loss_fn, meta_params["model"], tasks, config,
                    query_loss_fn)
  if config.spec.update == "pretrain":
    return _pretrain(loss_fn, meta_params["model"], tasks, query_loss_fn)

  def objective(mp):
    return meta_loss(loss_fn, mp["model"], tasks, config=config,
                     inner=mp["inner"], query_loss_fn=query_loss_fn)

  return jax.value_and_grad(objective)(
      {"model": meta_params["model"], "inner": meta_params.get("inner")})


def _reptile(loss_fn: LossFn, params: PyTree, tasks: PyTree,
             config: MetaConfig, query_loss_fn: LossFn
             ) -> tuple[jax.Array, PyTree]:
  """Reptile's direction; see `meta_grad`."""
  part = paths.partition(params, config.adapt)

  def adapted_leaves(support):
    # Only the adapted leaves leave the vmap: a frozen leaf returned from it
    # would be broadcast to one copy per task.
    adapted = adapt(loss_fn, params, support, config=config)
    return paths.partition(adapted, config.adapt).adapted

  # Reptile differentiates nothing through the inner loop.
  adapted = jax.lax.stop_gradient(jax.vmap(adapted_leaves)(tasks["support"]))
  deltas = {p: v - jnp.mean(adapted[p], axis=0)
            for p, v in part.adapted.items()}

  # The frozen leaves are shared by every task (not vmapped), so the
  # vmap's transpose sums their per-task gradients in place instead of
  # materialising one gradient of a large embedding table per task.
  def query_loss(frozen):
    losses = jax.vmap(lambda fast, query: query_loss_fn(
        part.merge(fast, frozen), query))(adapted, tasks["query"])
    return jnp.mean(losses)

  if part.frozen:
    loss, frozen_grads = jax.value_and_grad(query_loss)(part.frozen)
  else:
    loss, frozen_grads = query_loss({}), {}
  return loss, {"model": part.merge(deltas, frozen_grads), "inner": None}


def _pretrain(loss_fn: LossFn, params: PyTree, tasks: PyTree,
              query_loss_fn: LossFn) -> tuple[jax.Array, PyTree]:
  """The plain gradient of the unadapted support and query losses."""

  def joint(p):
    losses = jax.vmap(lambda task: 0.5 * (
        loss_fn(p, task["support"]) + query_loss_fn(p, task["query"])))(tasks)
    return jnp.mean(losses)

  loss, grads = jax.value_and_grad(joint)(params)
  return loss, {"model": grads, "inner": None}
