"""The train state: one pytree holding everything a resumed run needs.

The data sampler is a pure function of (seed, step), so `step` is also the
sampler's position; nothing else about the input pipeline is stored.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from metarec_jax import meta

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Meta-parameters, outer optimizer state and counters.

  Attributes:
    step: number of meta-steps taken (skipped non-finite ones included).
    params: `{"model": model params, "inner": learned inner-loop params}`.
    opt_state: the outer optax optimizer's state.
    nonfinite_streak: consecutive skipped (non-finite) updates.
    nonfinite_total: skipped updates over the whole run.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  nonfinite_streak: jax.Array
  nonfinite_total: jax.Array


def create(model, meta_config: meta.MetaConfig,
           optimizer: optax.GradientTransformation,
           rng: jax.Array) -> TrainState:
  """A fresh state (meant to run under `jax.jit`)."""
  params = model.init(rng)
  meta_params = {"model": params,
                 "inner": meta.init_inner(params, config=meta_config,
                                          loss_fn=model.loss_fn,
                                          support=model.example_batch(),
                                          rng=jax.random.fold_in(rng, 1))}
  zero = jnp.zeros([], jnp.int32)
  return TrainState(step=zero, params=meta_params,
                    opt_state=optimizer.init(meta_params),
                    nonfinite_streak=zero, nonfinite_total=zero)


def abstract(model, meta_config: meta.MetaConfig,
             optimizer: optax.GradientTransformation,
             sharding: jax.sharding.Sharding) -> TrainState:
  """The state's structure as `jax.ShapeDtypeStruct`s placed by `sharding`
  (what a restore reads into and the meta-step compiles for): nothing is
  computed, and the key is made inside (an eager one would compile)."""
  shapes = jax.eval_shape(
      lambda: create(model, meta_config, optimizer, jax.random.PRNGKey(0)))
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes)
