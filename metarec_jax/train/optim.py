"""The outer (meta) optimizer: Adam with warm-up, cosine decay and clipping."""

from __future__ import annotations

import optax


def schedule(train_config) -> optax.Schedule:
  """Linear warm-up to `train.lr`, cosine decay to `lr * end_lr_factor`."""
  lr = float(train_config.lr)
  steps = max(int(train_config.num_steps), 1)
  warmup = min(int(train_config.warmup_steps), steps - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
      decay_steps=steps, end_value=lr * float(train_config.end_lr_factor))


def outer_optimizer(train_config) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(float(train_config.grad_clip)),
      optax.adam(schedule(train_config)))
