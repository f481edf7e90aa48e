"""The outer (meta) optimizer: Adam with warm-up, cosine decay and clipping.

Its scalar hyperparameters (`Hyperparams`: the peak rate, the warm-up, the
final factor, the schedule's length or *horizon*, the clipping norm, and the
non-finite limit the meta-step applies) are arguments of the jitted
meta-step, not constants of it: a run extended to more steps, resumed with
another `train.lr`, or one of a sweep over rates reuses the compiled (and
persistently cached) step instead of compiling its own.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metarec_jax.meta import paths


class Hyperparams(NamedTuple):
  """The meta-step's scalar hyperparameters (a pytree of scalars: numpy
  on the host, replicated arrays as the step's argument, tracers inside)."""

  lr: Any  # `train.lr`, the peak rate
  end_lr: Any  # `train.lr * train.end_lr_factor`, where the decay ends
  warmup_steps: Any  # `train.warmup_steps`
  horizon: Any  # the schedule's length in steps (`default_horizon`)
  grad_clip: Any  # `train.grad_clip`
  max_nonfinite: Any  # `train.max_nonfinite`


def default_horizon(train_config) -> int:
  """`train.schedule_steps`, or `train.num_steps` where it is 0."""
  return int(train_config.schedule_steps) or int(train_config.num_steps)


def hyperparams(train_config, horizon: int | None = None) -> Hyperparams:
  """The `train` section's hyperparameters as numpy scalars (float32 rates,
  int32 counts); `horizon` None = `default_horizon`."""
  if horizon is None:
    horizon = default_horizon(train_config)
  lr = float(train_config.lr)
  # A rate beyond float32's range is infinite in the step, as it was as a
  # constant of it (its updates are refused as non-finite): no warning.
  with np.errstate(over="ignore"):
    return Hyperparams(
        lr=np.float32(lr),
        end_lr=np.float32(lr * float(train_config.end_lr_factor)),
        warmup_steps=np.int32(int(train_config.warmup_steps)),
        horizon=np.int32(horizon),
        grad_clip=np.float32(float(train_config.grad_clip)),
        max_nonfinite=np.int32(int(train_config.max_nonfinite)))


def learning_rate(hyper: Hyperparams, step, *, xp=jnp):
  """The outer learning rate at `step`.

  Linear warm-up from 0 to `lr` over `warmup_steps` (at most
  `horizon - 1`), cosine decay to `end_lr` at `horizon`, and that final
  rate from there on. The values are those of
  `optax.warmup_cosine_decay_schedule(0, lr, warmup, horizon, end)` (a test
  compares them); it is written out because optax's schedules take their
  hyperparameters as Python numbers, which would make them constants of the
  compiled step.

  Args:
    hyper: the hyperparameters (numpy scalars, arrays or tracers).
    step: the step count (int or integer array, traced or not).
    xp: `jax.numpy` inside a traced step, `numpy` on the host (the log
      lines of a resume compute rates without compiling anything).
  """
  lr = xp.asarray(hyper.lr, xp.float32)
  end = xp.asarray(hyper.end_lr, xp.float32)
  horizon = xp.maximum(xp.asarray(hyper.horizon, xp.float32), 1.0)
  step = xp.asarray(step, xp.float32)
  warmup = xp.minimum(xp.asarray(hyper.warmup_steps, xp.float32),
                      horizon - 1.0)
  warm = lr * step / xp.maximum(warmup, 1.0)
  progress = xp.minimum(xp.maximum(step - warmup, 0.0) / (horizon - warmup),
                        1.0)
  decayed = end + (lr - end) * 0.5 * (1.0 + xp.cos(np.pi * progress))
  return xp.where(step < warmup, warm, decayed)


def host_learning_rate(train_config, step: int, horizon: int) -> float:
  """`learning_rate` computed with numpy (for log lines; compiles nothing)."""
  # A rate beyond float32's range (`hyperparams`) is inf here, as in the
  # step, and so is nan where the schedule multiplies it by 0 or subtracts
  # it from itself: the line says what the step computes, numpy need not
  # warn.
  with np.errstate(over="ignore", invalid="ignore"):
    return float(learning_rate(hyperparams(train_config, horizon), step,
                               xp=np))


def outer_optimizer(hyper: Hyperparams, *, stacked: tuple[str, ...] = ()
                    ) -> optax.GradientTransformation:
  """Clipping and Adam on the schedule of `hyper`.

  Inside the meta-step `hyper` is its traced argument; for `init` any
  values do (`hyperparams(train_config)`): the optimizer's state does not
  depend on them. An ensemble (`stacked`: patterns of the model
  parameters with a leading member axis, `meta.members.stacked`) clips
  each member's gradient on its own (`clip_by_member_norm`).
  """
  clip = (clip_by_member_norm(hyper.grad_clip, stacked) if stacked
          else optax.clip_by_global_norm(hyper.grad_clip))
  return optax.chain(clip,
                     optax.adam(lambda count: learning_rate(hyper, count)))


def clip_by_member_norm(max_norm, stacked: tuple[str, ...]
                        ) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm` for each member of an ensemble on its own.

  The gradient of `{"model": params, "inner": ...}`: the slice `m` of every
  model leaf matched by `stacked` belongs to member `m` (the leading axis
  counts the members); the other leaves are shared. Member `m`'s norm
  counts its slices and the shared leaves, and its slices are scaled by
  `min(1, max_norm / norm_m)`; the shared leaves by the smallest of those
  factors. So one member's large gradient (a task its
  inner loop overshoots) no longer shrinks every other member's step, as a
  single global norm would: the members train as they would alone.
  """

  def update(updates, state, params=None):
    del params
    names = paths.leaf_paths(updates)
    leaves, treedef = jax.tree.flatten(updates)
    mine = [n.startswith("model/")
            and paths.matches_any(n.removeprefix("model/"), stacked)
            for n in names]
    members = next(g.shape[0] for g, m in zip(leaves, mine) if m)
    member_sq = sum((jnp.sum(jnp.reshape(g, (members, -1)) ** 2, axis=1)
                     for g, m in zip(leaves, mine) if m),
                    jnp.zeros((members,), jnp.float32))
    shared_sq = sum((jnp.sum(g ** 2) for g, m in zip(leaves, mine) if not m),
                    jnp.float32(0.0))
    norms = jnp.sqrt(member_sq + shared_sq)
    scale = jnp.where(norms < max_norm, 1.0, max_norm / norms)
    out = [g * scale.reshape((members,) + (1,) * (g.ndim - 1)).astype(g.dtype)
           if m else g * jnp.min(scale).astype(g.dtype)
           for g, m in zip(leaves, mine)]
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformation(
      lambda params: optax.EmptyState(), update)
