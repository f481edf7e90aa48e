"""The outer (meta) optimizer: Adam with warm-up, cosine decay and clipping.

The schedule's length (its *horizon*, `train.schedule_steps`, by default
`train.num_steps`) is an argument of the schedule, not a constant of it: the
jitted meta-step takes it as a traced scalar, so a run extended to more
steps reuses the compiled (and persistently cached) step instead of
compiling a new one for the new horizon.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def default_horizon(train_config) -> int:
  """`train.schedule_steps`, or `train.num_steps` where it is 0."""
  return int(train_config.schedule_steps) or int(train_config.num_steps)


def learning_rate(train_config, step, horizon, *, xp=jnp):
  """The outer learning rate at `step` of a schedule of `horizon` steps.

  Linear warm-up from 0 to `train.lr` over `train.warmup_steps` (at most
  `horizon - 1`), cosine decay to `lr * end_lr_factor` at `horizon`, and
  that final rate from there on. The values are those of
  `optax.warmup_cosine_decay_schedule(0, lr, warmup, horizon, end)` (a test
  compares them); it is written out because optax's schedules take the
  horizon as a Python int, which would make it a constant of the compiled
  step.

  Args:
    train_config: the `train` section (`lr`, `warmup_steps`,
      `end_lr_factor`).
    step: the step count (int or integer array, traced or not).
    horizon: the schedule's length in steps (int or integer array).
    xp: `jax.numpy` inside a traced step, `numpy` on the host (the log
      lines of a resume compute rates without compiling anything).
  """
  lr = float(train_config.lr)
  end = lr * float(train_config.end_lr_factor)
  horizon = xp.maximum(xp.asarray(horizon, xp.float32), 1.0)
  step = xp.asarray(step, xp.float32)
  warmup = xp.minimum(xp.float32(int(train_config.warmup_steps)),
                      horizon - 1.0)
  warm = lr * step / xp.maximum(warmup, 1.0)
  progress = xp.minimum(xp.maximum(step - warmup, 0.0) / (horizon - warmup),
                        1.0)
  decayed = end + (lr - end) * 0.5 * (1.0 + xp.cos(np.pi * progress))
  return xp.where(step < warmup, warm, decayed)


def host_learning_rate(train_config, step: int, horizon: int) -> float:
  """`learning_rate` computed with numpy (for log lines; compiles nothing)."""
  return float(learning_rate(train_config, step, horizon, xp=np))


def outer_optimizer(train_config, horizon: int | jax.Array | None = None
                    ) -> optax.GradientTransformation:
  """Clipping and Adam on the schedule of `horizon` steps.

  Args:
    train_config: the `train` section.
    horizon: the schedule's length, an int or a traced int32 scalar (the
      meta-step passes its argument); None = `default_horizon`. The
      optimizer's state does not depend on it (`init` may use any).
  """
  if horizon is None:
    horizon = default_horizon(train_config)
  return optax.chain(
      optax.clip_by_global_norm(float(train_config.grad_clip)),
      optax.adam(lambda count: learning_rate(train_config, count, horizon)))
