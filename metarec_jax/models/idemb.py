"""IDEmb: item ID embeddings and one meta-learned initial user embedding.

A matrix-factorisation-style recommender turned into a meta-learner: items
have learned ID embeddings (optionally plus a projection of the item's
feature embeddings, so that an item never seen in training is not blind),
and users have no ID at all: every user starts from ONE meta-learned user
embedding (and user bias), which the inner loop adapts to the user's support
ratings. A new user therefore starts from the meta-learned embedding and
becomes personal after a few gradient steps; the item side is meta-learned
like MeLU's embeddings.

    dot:  rating = global_bias + item_bias[i] + user_bias + <u, v_i>
    mlp:  rating = MLP([u, v_i]) + item_bias[i] + user_bias
    v_i  = item/id[i] (+ item/project(item feature embeddings of i))

Parameters:

    user/embedding                    [dim]   the initial user embedding
    user/bias                         []      the initial user bias
    item/id/embedding                 [items + 1, dim]  (row 0: padding)
    item/bias/embedding               [items + 1, 1]
    item/features/<field>/embedding   [vocab, dim]      (item_features)
    item/project/{kernel,bias}        [fields * dim, dim] (item_features)
    global_bias                       []                (dot)
    interaction/fc<k>/..., interaction/out/...          (mlp)

The default `meta.adapt` is `("^user/",)`: the per-user part.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarec_jax.data.schema import ITEM_ID, FeatureSpec
from metarec_jax.models.melu import Decision, Embedder, gather_rows

INTERACTIONS = ("dot", "mlp")


class User(nn.Module):
  """The meta-learned initial user: an embedding and a bias (`with_bias`;
  without it the bias is 0 and not a parameter)."""

  dim: int
  init_scale: float = 0.1
  with_bias: bool = True

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    embedding = self.param("embedding",
                           nn.initializers.normal(stddev=self.init_scale),
                           (self.dim,))
    if not self.with_bias:
      return embedding, jnp.zeros((), embedding.dtype)
    bias = self.param("bias", nn.initializers.zeros, ())
    return embedding, bias


class Item(nn.Module):
  """Item vectors `[..., dim]` and biases `[...]` from the item's ID (and
  features). `with_bias=False`: the bias is 0 and not a parameter.
  `zero_start`: the features' projection starts at zero too, so every item
  vector starts at zero."""

  num_items: int
  dim: int
  fields: tuple[FeatureSpec, ...] = ()
  with_bias: bool = True
  zero_start: bool = False

  @nn.compact
  def __call__(self, features: dict[str, jax.Array]
               ) -> tuple[jax.Array, jax.Array]:
    idx = features[ITEM_ID]
    # Zero-initialised: an ID never trained on (a new item) adds nothing,
    # and with features on the item is represented by its features alone.
    ids = nn.Embed(self.num_items, self.dim, name="id",
                   embedding_init=nn.initializers.zeros)
    vec = gather_rows(ids, idx)
    if self.fields:
      feats = Embedder(self.fields, self.dim, name="features")(features)
      project = nn.Dense(self.dim, name="project",
                         kernel_init=(nn.initializers.zeros if self.zero_start
                                      else nn.initializers.lecun_normal()))
      vec = vec + project(feats)
    if not self.with_bias:
      return vec, jnp.zeros(vec.shape[:-1], vec.dtype)
    bias = nn.Embed(self.num_items, 1, name="bias",
                    embedding_init=nn.initializers.zeros)
    return vec, gather_rows(bias, idx)[..., 0]


class IDEmb(nn.Module):
  """`prediction = apply(params, features)`, ratings `f32[...]`.

  Attributes:
    num_items: vocabulary of `item_id` (items + 1).
    item_fields: item-side feature fields added to the ID embedding (empty:
      pure ID embeddings).
    embed_dim: width of user and item vectors.
    interaction: `dot` or `mlp`.
    hidden: MLP widths (`mlp` only).
    output_bias: the global bias starts here (the mean rating).
  """

  num_items: int
  item_fields: tuple[FeatureSpec, ...] = ()
  embed_dim: int = 32
  interaction: str = "dot"
  hidden: Sequence[int] = (64,)
  output_bias: float = 0.0

  @nn.compact
  def __call__(self, features: dict[str, jax.Array],
               item_rows: bool = False) -> jax.Array:
    u, user_bias = User(self.embed_dim, name="user")()
    v, item_bias = Item(self.num_items, self.embed_dim,
                        tuple(self.item_fields), name="item")(features)
    if item_rows:
      return jnp.concatenate([v, item_bias[..., None]], axis=-1)
    if self.interaction == "dot":
      global_bias = self.param("global_bias",
                               nn.initializers.constant(self.output_bias), ())
      score = global_bias + jnp.sum(u * v, axis=-1)
    else:
      x = jnp.concatenate([jnp.broadcast_to(u, v.shape), v], axis=-1)
      score = Decision(tuple(self.hidden), self.output_bias,
                       name="interaction")(x)
    return score + item_bias + user_bias

  def featurize(self, features: dict[str, jax.Array]) -> jax.Array:
    """The items in the learned space, `[..., embed_dim + 1]`: vector and
    bias (what an encoder of a user's support items reads)."""
    return self(features, item_rows=True)
