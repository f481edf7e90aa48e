"""`model.compute_dtype`: mixed precision at the loss function's boundary.

The parameters the optimizer holds, the outer optimizer's state and the
inner loop's adapted leaves all stay float32 ("master" parameters); only
the model's arithmetic runs in the compute dtype. That is done in one
place, where the engine meets the model: every loss function (and the
`LinearHead` parts the core calls separately) casts the floating-point
parameters it receives to the compute dtype before applying the module,
so each flax layer sees bfloat16 kernels and activations, and the losses
upcast the predictions to float32 before they reduce them (`masked_loss`,
`ranking_loss`, `anchored.prior_loss`). The cast's transpose turns the
gradients back into float32, so the inner SGD steps and the meta-gradient
are accumulated in float32.

Casting at the boundary rather than passing flax's `dtype=` to every
`Dense`/`Embed`: the models stay free of precision plumbing (the same
module serves training, evaluation and serving), and the `LinearHead`
dual form, which multiplies features and kernels outside the modules, is
covered by the same switch (`LinearHead.compute_dtype`).

Predictions for evaluation, export and serving (`Recommender.predict`)
use the float32 parameters as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from metarec_jax.meta import LinearHead, Members

PyTree = Any

COMPUTE_DTYPES = ("float32", "bfloat16")


def cast_floating(tree: PyTree, dtype) -> PyTree:
  """`tree` with every floating-point leaf cast to `dtype` (others as is)."""
  return jax.tree.map(
      lambda x: (x.astype(dtype)
                 if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x),
      tree)


def compute_in(loss_fns: tuple, dtype_name: str) -> tuple:
  """The loss functions (None entries kept) computing in `dtype_name`.

  `float32` returns them unchanged (exactly the float32 program). The
  `LinearHead`s of one model that share a `featurize` keep sharing it
  (the core's dual form checks that the query loss reads the same
  features as the support loss).

  Raises:
    ValueError: an unknown dtype name.
  """
  if dtype_name not in COMPUTE_DTYPES:
    raise ValueError(f"model.compute_dtype must be one of"
                     f" {', '.join(COMPUTE_DTYPES)}, got {dtype_name!r}")
  if dtype_name == "float32":
    return loss_fns
  dtype = jnp.dtype(dtype_name)
  wrapped: dict[int, Any] = {}  # id of an original part -> its wrapper

  def once(fn, make):
    if fn is None:
      return None
    if id(fn) not in wrapped:
      wrapped[id(fn)] = make(fn)
    return wrapped[id(fn)]

  def params_cast(fn):
    return lambda params, *args: fn(cast_floating(params, dtype), *args)

  def head_cast(fn):
    return lambda params, a, batch: fn(cast_floating(params, dtype),
                                       a.astype(dtype), batch)

  def loss_cast(fn):
    def loss(params, batch):
      return fn(cast_floating(params, dtype), batch)
    rows = getattr(fn, "rows", None)
    if rows is not None:
      loss.rows = once(rows, params_cast)
    return loss

  def one(fn):
    if fn is None:
      return None
    if isinstance(fn, Members):
      return dataclasses.replace(fn, single=one(fn.single))
    if isinstance(fn, LinearHead):
      return dataclasses.replace(
          fn, featurize=once(fn.featurize, params_cast),
          head=once(fn.head, head_cast), rows=once(fn.rows, params_cast),
          compute_dtype=dtype)
    return once(fn, loss_cast)

  return tuple(one(fn) for fn in loss_fns)
