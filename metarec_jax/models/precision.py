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

Embedding tables read by a gather (more rows than the backend's
`onehot_vocab`, `is_gathered_table`) are the exception: they stay float32,
and `melu.gather_rows` casts the rows it reads to the compute dtype
(`gathered_rows_dtype`, set while a wrapped loss function runs). Casting
such a table costs two table-sized passes in the backward pass as well
(the table's gradient rounded to bfloat16, then back to float32): on an
H100, `configs/idemb_large.py`'s 1.7 GB of tables made bfloat16 slower
than float32 (49,722 against 64,691 tasks/s), and the rounding cost the
gradient precision for nothing. The rows `gather_rows` reads are the
same bfloat16 values either way; the anchored models' fixed item biases,
read by `nn.Embed` itself, now add in float32.

Predictions for evaluation, export and serving (`Recommender.predict`)
use the float32 parameters as they are.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from metarec_jax import backend
from metarec_jax.meta import LinearHead, Members

PyTree = Any

COMPUTE_DTYPES = ("float32", "bfloat16")

# The compute dtype while a loss function of `compute_in` runs (traces).
_ROWS_DTYPE: contextvars.ContextVar = contextvars.ContextVar(
    "gathered_rows_dtype", default=None)


def gathered_rows_dtype():
  """The dtype that rows gathered from a float32 table are cast to: the
  compute dtype inside a loss function of `compute_in`, else None (rows
  as stored)."""
  return _ROWS_DTYPE.get()


def is_gathered_table(path, leaf) -> bool:
  """An embedding table read by a gather (`melu.gather_rows`): a 2-D
  `embedding` leaf of more rows than the backend's `onehot_vocab`."""
  return (bool(path) and getattr(path[-1], "key", None) == "embedding"
          and jnp.ndim(leaf) == 2
          and jnp.shape(leaf)[0] > backend.defaults().onehot_vocab)


def cast_floating(tree: PyTree, dtype, *, keep_gathered: bool = False
                  ) -> PyTree:
  """`tree` with every floating-point leaf cast to `dtype` (others as is);
  `keep_gathered`: tables read by a gather stay as they are."""
  def cast(path, x):
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating) or (
        keep_gathered and is_gathered_table(path, x)):
      return x
    return x.astype(dtype)
  return jax.tree_util.tree_map_with_path(cast, tree)


@contextlib.contextmanager
def _computing_in(dtype):
  token = _ROWS_DTYPE.set(dtype)
  try:
    yield
  finally:
    _ROWS_DTYPE.reset(token)


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

  def in_dtype(fn, params, *args):
    with _computing_in(dtype):
      return fn(cast_floating(params, dtype, keep_gathered=True), *args)

  def params_cast(fn):
    return lambda params, *args: in_dtype(fn, params, *args)

  def head_cast(fn):
    return lambda params, a, batch: in_dtype(fn, params, a.astype(dtype),
                                             batch)

  def loss_cast(fn):
    def loss(params, batch):
      return in_dtype(fn, params, batch)
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
