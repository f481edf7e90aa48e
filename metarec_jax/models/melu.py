"""MeLU (Lee et al., KDD 2019): feature embeddings and a decision MLP.

Every feature field has an embedding table; list fields (genres, directors,
actors) are mean-pooled over their non-padding entries. The concatenated
embeddings feed the decision MLP (`hidden` units, ReLU) that predicts the
rating. MeLU adapts only the decision MLP per user; the embeddings are
meta-learned. The feature fields come from the data's schema, so the same
module serves MovieLens-1M, -100K and any generic dataset.

Parameters:

    embed/<field>/embedding         [vocab, embed_dim]
    decision/fc1/{kernel,bias}      [fields * embed_dim, hidden[0]]
    decision/fc2/{kernel,bias}      ...
    decision/out/{kernel,bias}      [hidden[-1], 1]
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarec_jax.data.schema import ITEM_ID, FeatureSpec


class Embedder(nn.Module):
  """Feature indices -> concatenated field embeddings `[..., F * dim]`.

  Tables start as N(0, std^2) (MeLU used 1). The `item_id` table starts at
  zero: an item never rated in training (a new item) then contributes
  nothing rather than a random vector that was never trained.
  """

  fields: tuple[FeatureSpec, ...]
  dim: int
  std: float = 1.0

  @nn.compact
  def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
    parts = []
    for spec in self.fields:
      init = (nn.initializers.zeros if spec.name == ITEM_ID
              else nn.initializers.normal(stddev=self.std))
      table = nn.Embed(spec.vocab, self.dim, name=spec.name,
                       embedding_init=init)
      idx = features[spec.name]
      if spec.name == ITEM_ID:
        # Index 0 (padding, a hidden ID) embeds to zero, like an item that
        # never had training ratings.
        parts.append(table(idx) * (idx > 0)[..., None].astype(
            table.embedding.dtype))
      elif spec.kind == "list":
        mask = (idx > 0)[..., None].astype(table.embedding.dtype)
        pooled = jnp.sum(table(idx) * mask, axis=-2)
        parts.append(pooled / jnp.maximum(jnp.sum(mask, axis=-2), 1.0))
      else:
        parts.append(table(idx))
    return jnp.concatenate(parts, axis=-1)


class Decision(nn.Module):
  """ReLU MLP with one output unit (MeLU's decision MLP, `idemb`'s `mlp`
  interaction); `first_layer=False` starts from fc1's pre-activation.
  `zero_output`: the output layer's kernel starts at zero (the MLP starts
  as the constant `output_bias`)."""

  hidden: tuple[int, ...]
  output_bias: float = 0.0
  zero_output: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, first_layer: bool = True) -> jax.Array:
    for i, width in enumerate(self.hidden):
      layer = nn.Dense(width, name=f"fc{i + 1}")
      if i > 0 or first_layer:
        x = layer(x)
      elif self.is_initializing():
        raise ValueError("initialise with first_layer=True")
      x = nn.relu(x)
    out = nn.Dense(1, name="out",
                   bias_init=nn.initializers.constant(self.output_bias),
                   kernel_init=(nn.initializers.zeros if self.zero_output
                                else nn.initializers.lecun_normal()))
    return out(x)[..., 0]


class MeLU(nn.Module):
  """MeLU: `prediction = apply(params, features)`, ratings `f32[...]`."""

  fields: tuple[FeatureSpec, ...]
  embed_dim: int = 32
  hidden: Sequence[int] = (64, 64)
  output_bias: float = 0.0
  embed_std: float = 1.0

  def setup(self):
    self.embed = Embedder(tuple(self.fields), self.embed_dim, self.embed_std)
    self.decision = Decision(tuple(self.hidden), self.output_bias)

  def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
    return self.decision(self.embed(features))

  def featurize(self, features: dict[str, jax.Array]) -> jax.Array:
    """The decision MLP's input `X: f32[..., fields * embed_dim]`."""
    return self.embed(features)

  def from_preactivation(self, a: jax.Array) -> jax.Array:
    """Predictions from fc1's pre-activation `a = X @ W1 + b1`."""
    return self.decision(a, first_layer=False)
