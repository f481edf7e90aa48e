"""A model as the rest of the engine sees it: init, predict, loss.

Batches of the package's own models are
`{"features": {name: array}, "rating": f32[n], "mask": bool[n]}` (with any
leading axes); the loss is the mean squared error over unmasked rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarec_jax.meta import LinearHead

PyTree = Any


def masked_mse(pred: jax.Array, batch: PyTree) -> jax.Array:
  """Mean squared error over the rows where `batch["mask"]` is set.

  The denominator is at least 1, so an all-padding batch has loss 0 and
  gradient 0 (an empty support set adapts nothing and makes no NaN).
  """
  mask = batch["mask"].astype(pred.dtype)
  err = (pred - batch["rating"].astype(pred.dtype)) ** 2
  return jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@dataclasses.dataclass(frozen=True)
class Recommender:
  """A flax module with what training, evaluation and export need.

  Attributes:
    name: the `model.name` it was built from.
    module: the flax module; `module.apply({"params": p}, features)`
      returns predicted ratings.
    loss_fn: `(params, batch) -> scalar` for the functional core (a
      `LinearHead` where the model has that structure).
    adapt: the default `meta.adapt` patterns (what the paper adapts).
    example_features: a one-row feature dict used to initialise.
  """

  name: str
  module: nn.Module
  loss_fn: Callable[[PyTree, PyTree], jax.Array]
  adapt: tuple[str, ...]
  example_features: dict[str, jax.Array]

  def init(self, rng: jax.Array) -> PyTree:
    """Fresh parameters (the `params` collection)."""
    return self.module.init(rng, self.example_features)["params"]

  def predict(self, params: PyTree, features: dict[str, jax.Array]) -> jax.Array:
    return self.module.apply({"params": params}, features)


def linear_head_loss(module: nn.Module, *, kernel: str, bias: str,
                     featurize_reads: tuple[str, ...]) -> LinearHead:
  """The `LinearHead` loss of a module with `featurize`/`from_preactivation`."""

  def featurize(params, batch):
    return module.apply({"params": params}, batch["features"],
                        method="featurize")

  def head(params, a, batch):
    pred = module.apply({"params": params}, a, method="from_preactivation")
    return masked_mse(pred, batch)

  return LinearHead(featurize=featurize, head=head, kernel=kernel, bias=bias,
                    featurize_reads=featurize_reads)


def plain_loss(module: nn.Module) -> Callable[[PyTree, PyTree], jax.Array]:
  """`(params, batch) -> masked MSE of module.apply(params, features)`."""

  def loss_fn(params, batch):
    return masked_mse(module.apply({"params": params}, batch["features"]),
                      batch)

  return loss_fn
