"""MeLU (Lee et al., KDD 2019): feature embeddings and a decision MLP.

Every feature field has an embedding table; list fields (genres, directors,
actors) are mean-pooled over their non-padding entries. The concatenated
embeddings feed the decision MLP (`hidden` units, ReLU) that predicts the
rating. MeLU adapts only the decision MLP per user; the embeddings are
meta-learned. The feature fields come from the data's schema, so the same
module serves MovieLens-1M, -100K and any generic dataset.

With a popularity prior (`model.popularity_prior`, implicit feedback with
a ranking loss) the score is a logit that starts from each item's
popularity:

    score = decision(embeddings)
            + popularity_weight * (log_share(0)
                                   + w * (log_share(i) - log_share(0)))
            + (1 - w) * predicted(item features)

`log_share` is the log of the item's smoothed share of the training
positives times the catalog size (with uniform negatives, the logit of a
positive that popularity alone gives; 0 for an average item; `log_share(0)`
that of an item without positives) and `w = n / (n + 5)` the weight of its
`n` training positives: fixed tables (`popularity_table`, no gradient). `popularity_weight` starts at 1 and is
meta-learned (popularity-weighted negatives call for less). An item
without training positives (a new item, or a hidden ID,
`data.item_id_dropout`) has `w = 0`: its popularity is predicted from its
features by a learned linear map (started at zero, the level of an item
without positives), as
the anchored rating model predicts a new item's bias, so that the network
need not learn popularity for new items. None of it is adapted: the
decision MLP, whose output layer starts at zero, learns what popularity
does not say.

Parameters:

    embed/<field>/embedding         [vocab, embed_dim]
    decision/fc1/{kernel,bias}      [fields * embed_dim, hidden[0]]
    decision/fc2/{kernel,bias}      ...
    decision/out/{kernel,bias}      [hidden[-1], 1]
    popularity                      [items + 1, 2]  (the level, w; fixed:
                                                     `popularity_table`)
    popularity_weight               []
    popularity_features/<field>/embedding  [vocab, 8]  (item fields)
    popularity_project/kernel       [item fields * 8, 1]
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax import backend
from metarec_jax.data.schema import ID_KEYS, ITEM_ID, FeatureSpec
from metarec_jax.models import precision

# The fields whose index 0 embeds to zero (`Embedder`).
IDS = frozenset({ITEM_ID, *ID_KEYS.values()})


class Embedder(nn.Module):
  """Feature indices -> concatenated field embeddings `[..., F * dim]`.

  Tables start as N(0, std^2) (MeLU used 1). The `item_id` table starts at
  zero: an item never rated in training (a new item) then contributes
  nothing rather than a random vector that was never trained. So does the
  row 0 of the ids as features (`ID_KEYS`), the row of every user and
  item that no training task reads (`FeatureTables.unseen_ids_missing`):
  a new user is read as no one in particular, not as one random draw.

  Tables of at most the backend's `onehot_vocab` rows
  (`backend.Defaults`; 0 on CPU, so never there) are read by a one-hot matrix
  product, exact (`Precision.HIGHEST`), whose gradient is a matmul rather
  than a scatter-add that many rows contend on: the gather's values, and
  its gradients up to the order of summation (under
  `model.compute_dtype=bfloat16` the matmul's accumulation is the more
  accurate of the two).
  """

  fields: tuple[FeatureSpec, ...]
  dim: int
  std: float = 1.0
  # (field name, initializer) of the tables that start elsewhere than at
  # N(0, std^2): the item ids' factors of `model.id_init=svd`.
  starts: tuple[tuple[str, Callable], ...] = ()

  @nn.compact
  def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
    parts = []
    onehot_vocab = backend.defaults().onehot_vocab
    for spec in self.fields:
      init = dict(self.starts).get(spec.name) or (
          nn.initializers.zeros if spec.name == ITEM_ID
          else nn.initializers.normal(stddev=self.std))
      table = nn.Embed(spec.vocab, self.dim, name=spec.name,
                       embedding_init=init)
      lookup = functools.partial(
          _onehot_lookup if spec.vocab <= onehot_vocab else gather_rows,
          table)
      idx = features[spec.name]
      rows = lookup(idx)  # in the compute dtype (`gather_rows`)
      if spec.name in IDS:
        # Index 0 (padding, a hidden ID, an ID without training ratings)
        # embeds to zero, like an item that never had training ratings.
        parts.append(rows * (idx > 0)[..., None].astype(rows.dtype))
      elif spec.kind == "list":
        mask = (idx > 0)[..., None].astype(rows.dtype)
        pooled = jnp.sum(rows * mask, axis=-2)
        parts.append(pooled / jnp.maximum(jnp.sum(mask, axis=-2), 1.0))
      else:
        parts.append(rows)
    return jnp.concatenate(parts, axis=-1)


def rows_init(rows: np.ndarray) -> Callable:
  """The initializer of a table that starts as `rows` `[n, dim]`: the
  table's first `n` rows (a table padded to `model.table_row_multiple` has
  more, which no index reads), zeros past them."""
  rows = np.asarray(rows, np.float32)

  def init(key, shape, dtype=jnp.float32):
    del key
    if rows.shape[0] > shape[0] or rows.shape[1] != shape[1]:
      raise ValueError(f"starting rows {rows.shape} do not fit a table of"
                       f" shape {tuple(shape)}")
    table = np.zeros(shape, np.float32)
    table[:rows.shape[0]] = rows
    return jnp.asarray(table, dtype)
  return init


def gather_rows(table: nn.Embed, idx: jax.Array) -> jax.Array:
  """`table(idx)`, with the gradient summed in float32 whatever the
  table's dtype.

  Under `model.compute_dtype=bfloat16` the table arrives in bfloat16
  (`models.precision`), and a gather's gradient is a scatter-add: in
  bfloat16 every row's contribution would round to an 8-bit mantissa as
  it is added, and a GPU adds 16-bit values by compare-and-swap loops
  rather than native atomics. Gathering from the table upcast to float32
  (exact) and casting the rows back (exact: they are bfloat16 values)
  gives the same values and moves the scatter-add to float32; the summed
  gradient rounds to bfloat16 once. A float32 table is read as it is, and
  inside a bfloat16 loss function (where `models.precision` keeps the
  gathered tables float32, `precision.gathered_rows_dtype`) the rows read
  are cast: the same values, with no table-sized cast either way.
  """
  embedding = table.embedding
  if jnp.finfo(embedding.dtype).bits < 32:
    return jnp.take(embedding.astype(jnp.float32), idx,
                    axis=0).astype(embedding.dtype)
  if table.num_embeddings == 1:  # as `nn.Embed` reads a one-row table
    rows = jnp.broadcast_to(embedding[0], idx.shape + embedding.shape[1:])
  else:
    rows = jnp.take(embedding, idx, axis=0)
  compute = precision.gathered_rows_dtype()
  return rows if compute is None else rows.astype(compute)


def _onehot_lookup(table: nn.Embed, idx: jax.Array) -> jax.Array:
  """`table(idx)` as `one_hot(idx) @ embedding` (see `Embedder`)."""
  embedding = table.embedding
  onehot = jax.nn.one_hot(idx, table.num_embeddings, dtype=embedding.dtype)
  return jnp.dot(onehot, embedding, precision=jax.lax.Precision.HIGHEST)


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


PRIOR_PSEUDO = 5.0  # pseudo-positives of the evidence weight w
PRIOR_DIM = 8  # width of the item-feature embeddings of the predicted part


def popularity_table(counts: np.ndarray | None, vocab: int) -> np.ndarray:
  """`[vocab, 2]` float32: row `i + 1` is `(w * s(c_i) + (1 - w) * s(0),
  w)` for item `i` with `c_i` training positives (`C` in all, `N` items):
  `s(c) = log((c + 1) * N / (C + N))`, the log of a smoothed share against
  the uniform one, and `w = c_i / (c_i + PRIOR_PSEUDO)`: a few positives
  move an item from the level of one without any, and the score rises with
  the count (pulled towards 0, an average item, an item with one positive
  scored below all the items without: a shop's never-sold listings ranked
  above its sellers). Row 0 (padding, a hidden ID) and items without
  positives: `(s(0), 0)`, their features' prediction added. `counts`
  None: zeros (the parameter's shape, where an export or a checkpoint
  supplies its value)."""
  out = np.zeros((vocab, 2), np.float32)
  if counts is not None:
    c = np.asarray(counts, np.float64)[:vocab - 1]
    n = vocab - 1
    weight = c / (c + PRIOR_PSEUDO)
    share = lambda k: np.log((k + 1.0) * n / (c.sum() + n))
    out[:, 0] = share(0.0)
    out[1:len(c) + 1, 0] = weight * share(c) + (1.0 - weight) * share(0.0)
    out[1:len(c) + 1, 1] = weight
  return out


class MeLU(nn.Module):
  """MeLU: `prediction = apply(params, features)`, ratings `f32[...]`.

  `popularity_init`: `rng -> [items + 1, 2]`, the prior's table as
  initialised (`popularity_table`), or None for no prior; `item_fields`:
  the item-side fields its predicted part reads."""

  fields: tuple[FeatureSpec, ...]
  embed_dim: int = 32
  hidden: Sequence[int] = (64, 64)
  output_bias: float = 0.0
  embed_std: float = 1.0
  popularity_init: Callable[[jax.Array], jax.Array] | None = None
  item_fields: tuple[FeatureSpec, ...] = ()
  members: int = 1

  def setup(self):
    embedder, decision = Embedder, Decision
    if self.members > 1:
      # An ensemble: every parameter of the embeddings and the decision MLP
      # gets a leading member axis (drawn per member), the paths stay.
      embedder = _stacked(Embedder, self.members, None, -2)
      decision = _stacked(Decision, self.members, (-2, None), -1)
    self.embed = embedder(tuple(self.fields), self.embed_dim, self.embed_std)
    # With the prior the network starts at nothing (its output layer at
    # zero): the score starts as popularity, exactly.
    self.decision = decision(tuple(self.hidden), self.output_bias,
                             zero_output=self.popularity_init is not None)
    if self.popularity_init is not None:
      self.popularity_table = self.param("popularity", self.popularity_init)
      self.popularity_weight = self.param("popularity_weight",
                                          nn.initializers.ones, ())
      if self.item_fields:
        self.popularity_features = Embedder(tuple(self.item_fields),
                                            PRIOR_DIM, 0.1)
        self.popularity_project = nn.Dense(
            1, use_bias=False, kernel_init=nn.initializers.zeros)

  def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
    return self._mean(self.decision(self.embed(features), True)) + self.prior(
        features)

  def _mean(self, out: jax.Array) -> jax.Array:
    """An ensemble's prediction: the mean of its members' `[..., members]`
    (one member: `out` itself)."""
    return jnp.mean(out, axis=-1) if self.members > 1 else out

  def prior(self, features: dict[str, jax.Array]) -> jax.Array | float:
    """The popularity prior of each row's item (0 without the prior)."""
    if self.popularity_init is None:
      return 0.0
    row = jax.lax.stop_gradient(self.popularity_table)[features[ITEM_ID]]
    level, weight = row[..., 0], row[..., 1]  # by the item's count
    prior = self.popularity_weight * level
    if self.item_fields:
      predicted = self.popularity_project(
          self.popularity_features(features))[..., 0]
      prior = prior + (1.0 - weight) * predicted
    return prior

  def featurize(self, features: dict[str, jax.Array]) -> jax.Array:
    """The decision MLP's input `X: f32[..., fields * embed_dim]`
    (`[..., members, fields * embed_dim]` for an ensemble)."""
    return self.embed(features)

  def from_preactivation(self, a: jax.Array) -> jax.Array:
    """Predictions from fc1's pre-activation `a = X @ W1 + b1` (an
    ensemble's: `a: [..., members, hidden]`, the members' mean)."""
    return self._mean(self.decision(a, False))


def _stacked(module: type[nn.Module], members: int, in_axes, out_axes):
  """`module` as `members` independent copies (`nn.vmap`): parameters with
  a leading member axis, each copy initialised from its own key."""
  return nn.vmap(module, variable_axes={"params": 0},
                 split_rngs={"params": True}, in_axes=in_axes,
                 out_axes=out_axes, axis_size=members)
