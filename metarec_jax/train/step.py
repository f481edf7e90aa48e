"""The meta-step: sharded meta-gradient, chunked accumulation, outer update.

The task axis of a batch is sharded over the mesh axis `tasks`; parameters
are replicated, except the large embedding tables, which a 2-D mesh splits
by rows over its `model` axis (`placement`). `shard_map` is manual over
`tasks` only: over `model` XLA partitions the lookups and their gradients
(GSPMD), so the models know nothing of the split. Inside, each device group
computes the meta-gradient of its own tasks, `chunk_tasks` at a time (a
`lax.scan` accumulates the chunks, so memory is bounded by the chunk, not
the meta-batch), and the devices average with `pmean`. A step whose loss,
meta-gradient or updated state (any parameter or optimizer-state leaf) is
not finite keeps the old state and is counted, all decided on the device.
From `max_nonfinite` such steps in a row on, every update is refused and
the streak keeps counting, so the state stays the last finite one and the
loop, reading the counters only where it reads the device anyway, knows the
exact step the limit was reached (`train.loop`). The scalar hyperparameters
(`optim.Hyperparams`) are an argument of the step, so one compiled step
serves any of their values.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from metarec_jax import meta
from metarec_jax.meta import members as members_lib
from metarec_jax.meta import paths
from metarec_jax.runtime import AXIS
from metarec_jax.workdir import optim
from metarec_jax.workdir.state import TrainState

PyTree = Any


def chunked_meta_grad(loss_fn, meta_config: meta.MetaConfig, meta_params,
                      tasks, *, chunk_tasks: int, query_loss_fn=None,
                      unadapted_weight: float = 0.0):
  """Meta-loss, unadapted query loss and meta-gradient of `tasks`,
  `chunk_tasks` tasks at a time (0 or >= the tasks: all at once).

  Equal to the unchunked values: every chunk has the same number of tasks,
  so the mean of the chunk means is the mean. A positive
  `unadapted_weight` adds that multiple of the unadapted query loss's
  gradient to the meta-parameters' (`train.unadapted_weight`); the
  returned meta-loss stays the adapted one.
  """
  num_tasks = jax.tree.leaves(tasks)[0].shape[0]
  chunk = chunk_tasks if 0 < chunk_tasks < num_tasks else num_tasks
  if num_tasks % chunk:
    raise ValueError(f"{num_tasks} tasks per device is not a multiple of"
                     f" train.chunk_tasks={chunk}")

  query_loss_fn = query_loss_fn or loss_fn

  def one(chunk_of_tasks):
    loss, grads = meta.meta_grad(loss_fn, meta_params, chunk_of_tasks,
                                 config=meta_config,
                                 query_loss_fn=query_loss_fn)

    def unadapted_loss(model_params):
      return jnp.mean(jax.vmap(lambda q: query_loss_fn(model_params, q))(
          chunk_of_tasks["query"]))

    if not unadapted_weight:
      return loss, unadapted_loss(meta_params["model"]), grads
    unadapted, toward = jax.value_and_grad(unadapted_loss)(
        meta_params["model"])
    grads = {**grads, "model": jax.tree.map(
        lambda g, u: g + unadapted_weight * u, grads["model"], toward)}
    return loss, unadapted, grads

  num_chunks = num_tasks // chunk
  if num_chunks == 1:
    return one(tasks)
  chunks = jax.tree.map(
      lambda a: a.reshape(num_chunks, chunk, *a.shape[1:]), tasks)
  shapes = jax.eval_shape(one, jax.tree.map(lambda a: a[0], chunks))

  def zeros(s):
    return jnp.zeros(s.shape, s.dtype)

  def body(acc, chunk_of_tasks):
    return jax.tree.map(jnp.add, acc, one(chunk_of_tasks)), None

  total, _ = jax.lax.scan(body, jax.tree.map(zeros, shapes), chunks)
  return jax.tree.map(lambda x: x / num_chunks, total)


def all_finite(tree: PyTree) -> jax.Array:
  """A scalar: whether every floating-point leaf of `tree` is finite."""
  checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.stack(checks).all() if checks else jnp.bool_(True)


def computed_once(flag: jax.Array) -> jax.Array:
  """`flag`, as the output of a conditional, which XLA never fuses.

  Every leaf's update selects on the step's finiteness flag. Left a plain
  value, the flag is a chain of cheap scalar ops (an `and` of every leaf's
  check, the scalar leaves' own updates) that XLA's fusion copies into each
  of the leaves' update fusions: the tiny MeLU's step had 1,700 `is-finite`
  ops and 39,000 lines of optimised HLO instead of 14,500, and took twice as
  long to compile. (An optimisation barrier does not stop it: the CPU
  compiler removes barriers before fusing.)
  """
  return jax.lax.cond(flag, lambda: jnp.bool_(True), lambda: jnp.bool_(False))


def make_train_step(loss_fn, meta_config: meta.MetaConfig, mesh: Mesh, *,
                    chunk_tasks: int, query_loss_fn=None,
                    meta_fixed: tuple[str, ...] = (),
                    unadapted_weight: float = 0.0) -> Callable:
  """`(state, batch, hyper) -> (state, metrics)`, to be jitted by the
  caller.

  `hyper` (`optim.Hyperparams` of replicated scalars) holds the outer
  optimizer's rate schedule and clipping norm and `max_nonfinite`: once
  that many steps in a row were skipped, every later step is skipped too
  (see the module docstring). Being an argument rather than constants,
  they leave the compiled step the same for every value.
  `meta_fixed`: patterns of model parameters whose meta-gradient is zeroed
  before the update (`Recommender.meta_fixed`). `unadapted_weight`: see
  `chunked_meta_grad` (`train.unadapted_weight`). An ensemble's loss
  (`meta.Members`) is clipped per member (`optim.outer_optimizer`).
  """
  stacked = members_lib.stacked(loss_fn)

  def local(meta_params, tasks):
    out = chunked_meta_grad(loss_fn, meta_config, meta_params, tasks,
                            chunk_tasks=chunk_tasks,
                            query_loss_fn=query_loss_fn,
                            unadapted_weight=unadapted_weight)
    # (XLA's partitioner rejects an all-reduce over a lone manual device
    # beside an automatic `model` axis: one task shard needs none.)
    return jax.lax.pmean(out, AXIS) if mesh.shape[AXIS] > 1 else out

  # check_vma=False: the core is written for plain arrays and knows nothing
  # of shard_map's varying-axis types; the only collective is the pmean.
  # Manual over `tasks` alone: a `model` axis, if any, stays XLA's.
  sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AXIS)),
                          out_specs=P(), axis_names={AXIS}, check_vma=False)

  def train_step(state: TrainState, batch: PyTree, hyper: optim.Hyperparams):
    loss, unadapted, grads = sharded(state.params, batch)
    grads = {**grads, "model": paths.zero_matching(grads["model"], meta_fixed)}
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optim.outer_optimizer(
        hyper, stacked=stacked).update(
        grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A finite gradient can still make a non-finite state (an infinite
    # learning rate, an overflowing update): the new state is checked too.
    # From the limit on the run has ended: nothing changes after it.
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & all_finite((params, opt_state))
              & (state.nonfinite_streak < hyper.max_nonfinite))
    finite = computed_once(finite)

    def keep(new, old):
      return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
    metrics = {
        "train/loss": loss,
        "train/query_loss_unadapted": unadapted,
        "train/grad_norm": grad_norm,
        "train/param_norm": optax.tree.norm(new_state.params["model"]),
        "train/lr": optim.learning_rate(hyper, state.step),
        "train/nonfinite_total": new_state.nonfinite_total,
        "train/nonfinite_streak": new_state.nonfinite_streak,
    }
    return new_state, metrics

  return train_step
