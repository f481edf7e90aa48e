"""The inner-loop optimizer, built from optax inside the core.

The optimizer is `chain(direction, rates)`: the direction is the optax
preconditioner named by `MetaConfig.inner_optimizer` (identity for SGD), the
rates are the fixed `inner_lr` (MAML, Reptile) or learned rates held in
`inner` (Meta-SGD: one per element; MAML++: one per step and leaf).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from metarec_jax.meta import encoder, members, paths
from metarec_jax.meta.config import MetaConfig

PyTree = Any


class ScaleByRatesState(NamedTuple):
  """The inner step counter (selects the rate of the step in MAML++)."""
  count: jax.Array


def scale_by_rates(rates: dict[str, jax.Array], *,
                   per_step: bool) -> optax.GradientTransformation:
  """Multiplies each update by minus its learned rate.

  Args:
    rates: path -> rate array, the shape of the leaf (`per_step=False`) or
      one rate per inner step (`per_step=True`, shape `[inner_steps]`).
    per_step: pick `rates[path][step]` for the current step.
  """

  def init_fn(params):
    del params
    return ScaleByRatesState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    if per_step:
      step_rates = {p: r[state.count] for p, r in rates.items()}
    else:
      step_rates = rates
    updates = {p: -step_rates[p] * u for p, u in updates.items()}
    return updates, ScaleByRatesState(count=state.count + 1)

  return optax.GradientTransformation(init_fn, update_fn)


def direction(config: MetaConfig) -> optax.GradientTransformation:
  """The rate-free part of the inner optimizer."""
  if config.inner_optimizer == "sgd":
    return optax.identity()
  if config.inner_optimizer == "momentum":
    return optax.trace(decay=config.momentum)
  return optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2,
                             eps=config.adam_eps,
                             eps_root=config.adam_eps_root)


def check_rates(config: MetaConfig, inner: PyTree | None,
                fast: dict) -> None:
  """Raises ValueError where learned rates do not fit the adapted leaves
  `fast`: a leaf without rates (a KeyError deep in the step) or, for
  Meta-SGD, rates of another shape than their leaf (a broadcasting error
  13 frames down); MAML++'s length is `learned_rates`' check."""
  if not config.spec.rates or inner is None:
    return
  rates = learned_rates(config, inner)
  missing = sorted(set(fast) - set(rates))
  if missing:
    raise ValueError(
        f"meta.algorithm={config.algorithm}: inner holds no rates of the"
        f" adapted parameter(s) {', '.join(map(repr, missing[:3]))}"
        " (inner comes from init_inner with the same params and"
        " meta.adapt)")
  if config.spec.rates == "element":
    for path, leaf in fast.items():
      if jnp.shape(rates[path]) != jnp.shape(leaf):
        raise ValueError(
            f"meta.algorithm={config.algorithm}: inner[{path!r}] has shape"
            f" {tuple(jnp.shape(rates[path]))}, its parameter"
            f" {tuple(jnp.shape(leaf))} (one rate per element)")


def check_adam_dtypes(config: MetaConfig, fast: dict) -> None:
  """Raises ValueError where Adam's `eps` or `eps_root` rounds to 0 in an
  adapted leaf's dtype (float16: 1e-8 underflows): every zero gradient
  coordinate, an empty support set's included, became 0/0 = NaN, against
  the promise that `eps_root` keeps them finite."""
  if config.inner_optimizer != "adam":
    return
  for path, leaf in fast.items():
    dtype = jnp.result_type(leaf)
    if any(e > 0 and float(np.asarray(e, dtype)) == 0.0  # (not traced)
           for e in (config.adam_eps, config.adam_eps_root)):
      raise ValueError(
          f"meta.inner_optimizer=adam: MetaConfig.adam_eps="
          f"{config.adam_eps:g} or adam_eps_root={config.adam_eps_root:g}"
          f" is 0 in the"
          f" {dtype} of the adapted parameter {path!r} (zero gradients"
          " would give NaN): adapt it in float32 or bfloat16, or raise"
          " them")


def inner_optimizer(config: MetaConfig,
                    inner: PyTree | None) -> optax.GradientTransformation:
  """The optax transformation the inner loop applies to adapted leaves."""
  if config.spec.rates:
    if inner is None:
      raise ValueError(
          f"meta.algorithm={config.algorithm} learns inner rates: pass"
          " inner=init_inner(params, config=config)")
    rates = learned_rates(config, inner)
    scale = scale_by_rates(rates, per_step=config.spec.rates == "step")
  else:
    scale = optax.scale(-config.inner_lr)
  return optax.chain(direction(config), scale)


def step_rates(config: MetaConfig, inner: PyTree | None, path: str,
               dtype) -> jax.Array:
  """The SGD rate of one leaf at every inner step, shape `[inner_steps]`.

  Only meaningful where the rate is a scalar per step (MAML, MAML++); used
  by the dual form, which needs the rates explicitly.
  """
  if config.spec.rates == "step":
    return learned_rates(config, inner)[path]
  return jnp.full((config.inner_steps,), config.inner_lr, dtype)


def learned_rates(config: MetaConfig, inner: PyTree) -> dict[str, jax.Array]:
  """`{path: rates}` of `inner`, MAML++'s checked to hold one rate per
  inner step: indexed past its end, a rate array is clamped by JAX, so 1
  rate for 3 steps ran all 3 at it (`init_inner` of other settings, or
  `meta.inner_steps` changed after training) without a word.

  Raises:
    ValueError: a leaf's rates of another length than `inner_steps`.
  """
  rates = traverse_util.flatten_dict(inner, sep="/")
  if config.spec.rates == "step":
    for path, r in rates.items():
      if jnp.shape(r) != (config.inner_steps,):
        raise ValueError(
            f"meta.algorithm={config.algorithm}: inner[{path!r}] holds"
            f" rates of shape {tuple(jnp.shape(r))}, one per inner step,"
            f" but meta.inner_steps is {config.inner_steps} (inner comes"
            " from init_inner with the same config)")
  return rates


def init_inner(params: PyTree, *, config: MetaConfig, loss_fn=None,
               support: PyTree | None = None,
               rng: jax.Array | None = None) -> PyTree | None:
  """The learned inner-loop parameters of `config.algorithm`, or None.

  Meta-SGD: one rate per element of every adapted leaf; MAML++: one rate per
  inner step for every adapted leaf; both start at `config.inner_lr`. The
  result is a nested dict mirroring the adapted leaves' paths. The
  algorithms that encode the support set (`metric`, `amortised`, `hybrid`)
  return `{"encoder": params}` (see `meta.encoder.init`); they need the
  loss (for its `rows`), an example support batch (only its shapes are
  read) and a PRNG key (default `PRNGKey(0)`).
  """
  if not config.learns_inner:
    return None
  if isinstance(loss_fn, members.Members):
    loss_fn.check(config)
  if config.spec.encoder:
    if loss_fn is None or support is None:
      raise ValueError(
          f"meta.algorithm={config.algorithm} learns an encoder of the"
          " support set: pass init_inner(..., loss_fn=, support=)")
    return {"encoder": encoder.init(
        loss_fn, params, support, config=config,
        rng=jax.random.PRNGKey(0) if rng is None else rng)}
  part = paths.partition(params, config.adapt)
  out = {}
  for path, leaf in part.adapted.items():
    if config.spec.rates == "element":
      out[path] = jnp.full(jnp.shape(leaf), config.inner_lr,
                           jnp.result_type(leaf))
    else:
      out[path] = jnp.full((config.inner_steps,), config.inner_lr,
                           jnp.result_type(leaf))
  return traverse_util.unflatten_dict(out, sep="/")
