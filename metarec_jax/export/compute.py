"""The device side of export: adapt a chunk of users, rank the catalogue.

Both functions are written for one user and vmapped over a fixed-size chunk
of users, sharded over the mesh's devices; they compile once per support
width bucket (and per excluded-items width for the ranking), so memory is
bounded by the chunk size however many users there are.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from metarec_jax import meta, runtime
from metarec_jax.errors import Diverged, inner_settings
from metarec_jax.meta import paths
from metarec_jax.models import Recommender
from metarec_jax.runtime import AXIS, CompiledByShape

PyTree = Any


def with_leaves(params: PyTree, fast: dict[str, jax.Array]) -> PyTree:
  """`params` with the leaves named in `fast` (by path) replaced."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  names = paths.leaf_paths(params)
  return jax.tree_util.tree_unflatten(
      treedef, [fast.get(n, leaf) for n, leaf in zip(names, leaves)])


def adapt_leaves(model: Recommender, config: meta.MetaConfig, params: PyTree,
                 inner: PyTree | None, support: PyTree) -> dict[str, jax.Array]:
  """One user's adapted leaves (`{path: leaf}`) from its support batch."""
  adapted = meta.adapt(model.loss_fn, params, support, config=config,
                       inner=inner)
  return paths.partition(adapted, config.adapt).adapted


def cast(leaves: dict[str, jax.Array], dtype: str) -> dict[str, jax.Array]:
  """float32 leaves -> the stored dtype (bfloat16 as uint16 bit patterns)."""
  if dtype == "bfloat16":
    return {p: jax.lax.bitcast_convert_type(v.astype(jnp.bfloat16), jnp.uint16)
            for p, v in leaves.items()}
  return leaves


def _user_items(user_features: dict[str, jax.Array],
                item_features: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """One user's feature row beside every row of a block of items."""
  n = next(iter(item_features.values())).shape[0]
  features = dict(item_features)
  for name, value in user_features.items():
    features[name] = jnp.broadcast_to(value, (n,) + value.shape)
  return features


def score_items(model: Recommender, params: PyTree, fast: dict[str, jax.Array],
                user_features: dict[str, jax.Array],
                item_features: dict[str, jax.Array]) -> jax.Array:
  """Predicted ratings of one user (`fast` leaves) for a block of items.

  Args:
    user_features: `{name: int32[] or [L]}`: the user's own feature row.
    item_features: `{name: int32[B] or [B, L]}`: the items' rows.
  """
  return model.predict(with_leaves(params, fast),
                       _user_items(user_features, item_features))


def rank_items(model: Recommender, params: PyTree, fast: dict[str, jax.Array],
               user_features: dict[str, jax.Array],
               item_features: dict[str, jax.Array]
               ) -> tuple[jax.Array, jax.Array]:
  """`score_items`' ratings and the scores that rank them
  (`Recommender.predict_ranked`), float32."""
  served, ranked = model.predict_ranked(
      with_leaves(params, fast), _user_items(user_features, item_features))
  return served.astype(jnp.float32), ranked.astype(jnp.float32)


# Items scored per step of a top-k scan: a user's block of activations
# (`[block, widths]`), not the catalogue's, sits in memory at once. The
# export's chunks of users take this many; a server's batch of B users
# takes `RANKED_PAIRS // B` (at least this many), so that few users rank
# a catalogue of MovieLens' size in one step.
ITEM_BLOCK = 1024
RANKED_PAIRS = 1 << 17


def catalogue_blocks(item_tables: dict, num_items: int, xp=np,
                     block: int | None = None):
  """The catalogue's feature rows cut into blocks for `top_k_scan`.

  Returns:
    (`{name: [blocks, B(, L)]}`, each slot's item index int32
    `[blocks, B]`): as few blocks of at most about `block` (default
    `ITEM_BLOCK`) items as cover the catalogue, of equal size (a multiple
    of 8), the last padded with the padding row (features 0, index -1).
    `xp`: numpy (the exporter places them once) or `jax.numpy` (inside a
    jitted function, from the catalogue's tables).
  """
  # As few blocks as `block` items allow, of equal size (a multiple of 8):
  # full blocks of `block` left up to a whole block of padding to score.
  count = math.ceil(num_items / (block or ITEM_BLOCK))
  block = math.ceil(math.ceil(num_items / count) / 8) * 8
  count = math.ceil(num_items / block)
  pad = count * block - num_items
  blocks = {}
  for name, values in item_tables.items():
    values = xp.asarray(values)
    padded = xp.pad(values, [(0, pad)] + [(0, 0)] * (values.ndim - 1))
    blocks[name] = padded.reshape((count, block) + values.shape[1:])
  index = xp.concatenate([xp.arange(num_items), xp.full(pad, -1)])
  return blocks, index.astype(xp.int32).reshape(count, block)


def top_k_one(model: Recommender, params: PyTree, fast: dict[str, jax.Array],
              user_features: dict[str, jax.Array], rated: jax.Array,
              item_blocks: dict[str, jax.Array], block_index: jax.Array,
              k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The user's k best items, excluding `rated` (item indices, -1 = pad):
  `top_k_scan` of the blocks (`catalogue_blocks`) less the rated ones,
  looked up block by block (a mask of the whole catalogue per user would
  hold a chunk's users times the catalogue at once)."""
  is_rated = rated_lookup(rated)
  return top_k_scan(model, params, fast, user_features, item_blocks,
                    block_index, lambda idx: (idx < 0) | is_rated(idx), k)


def top_k_scan(model: Recommender, params: PyTree, fast: dict[str, jax.Array],
               user_features: dict[str, jax.Array],
               item_blocks: dict[str, jax.Array], block_index: jax.Array,
               excluded: jax.Array | Callable[[jax.Array], jax.Array],
               k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The user's k best items of the blocks but `excluded`.

  `item_blocks[name]` is `[num_blocks, B(, L)]`, `block_index` the item
  index of each slot `[num_blocks, B]` (-1: padding past the catalogue),
  `excluded` bool `[num_blocks, B]` (the padding too), or a function of a
  block's item indices giving that block's mask. A `lax.scan` over
  blocks keeps a running top-k, so the scores of the whole catalogue never
  sit in memory at once. Ties keep the lower item index. The order is the
  model's scores' (`rank_items`), the scores returned the served ratings.

  Returns:
    (scores f32[k], item indices int32[k], the number of candidates whose
    score is not finite); -inf and -1 where the user has fewer than k
    candidates.
  """

  is_out = excluded if callable(excluded) else None

  def block(carry, xs):
    best, best_served, best_idx, bad = carry
    feats, idx, mask = xs
    out = mask if is_out is None else is_out(idx)
    served, ranked = rank_items(model, params, fast, user_features, feats)
    bad = bad + jnp.sum(~out & ~(jnp.isfinite(served)
                                 & jnp.isfinite(ranked)))
    ranked = jnp.where(out, -jnp.inf, ranked)
    both = jnp.concatenate([best, ranked])
    both_served = jnp.concatenate([best_served, served])
    both_idx = jnp.concatenate([best_idx, idx])
    top, pos = jax.lax.top_k(both, k)
    top_idx = jnp.where(jnp.isfinite(top), both_idx[pos], -1)
    top_served = jnp.where(jnp.isfinite(top), both_served[pos], -jnp.inf)
    return (top, top_served, top_idx, bad), None

  init = (jnp.full((k,), -jnp.inf, jnp.float32),
          jnp.full((k,), -jnp.inf, jnp.float32), jnp.full((k,), -1, jnp.int32),
          jnp.zeros((), jnp.int32))
  (_, top_served, top_idx, bad), _ = jax.lax.scan(
      block, init, (item_blocks, block_index,
                    None if is_out is not None else excluded))
  return top_served, top_idx, bad


def rated_lookup(rated: jax.Array):
  """`is_rated(idx)`: whether each item index of `idx` is among `rated`
  (item indices, -1 = pad), by a binary search in `rated` sorted, so
  O(B log R) per block of B items. (Comparing every rated item with every
  item of a block was O(R * B): a chunk's rated lists are padded to its
  longest, so one user with 50,000 ratings made every user of the chunk
  pay 65,536 comparisons per catalogue item, and an export with
  `--top_k` ran for many minutes where it took seconds without.)"""
  if rated.shape[0] == 0:
    return lambda idx: jnp.zeros(idx.shape, bool)
  ordered = jnp.sort(rated)  # the -1 pads first; no item index is -1

  def is_rated(idx: jax.Array) -> jax.Array:
    at = jnp.searchsorted(ordered, idx)
    return ordered[jnp.minimum(at, ordered.shape[0] - 1)] == idx
  return is_rated


def counts(model: Recommender, config: meta.MetaConfig, params: PyTree,
           support: PyTree) -> jax.Array:
  """Whether one user's support set moves its adaptation (bool scalar):
  `Recommender.counts`, and never where the config adapts nothing (no
  encoder and `meta.inner_steps=0`: every user keeps the
  meta-parameters)."""
  if not config.spec.encoder and not config.inner_steps:
    return jnp.zeros((), bool)
  return model.counts(params, support)


def support_finite(model: Recommender, params: PyTree,
                   fast: dict[str, jax.Array], support: PyTree) -> jax.Array:
  """Whether one user's adapted leaves and the predictions they give for
  the user's own support rows are all finite (a diverged inner loop can
  leave finite but huge leaves whose predictions overflow)."""
  leaves = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(v))
                                for v in fast.values()] or [True]))
  predicted = model.predict(with_leaves(params, fast), support["features"])
  return leaves & jnp.all(jnp.isfinite(predicted) | ~support["mask"])


def check_finite(user_ids: np.ndarray, finite: np.ndarray,
                 bad_scores: np.ndarray | None, config: meta.MetaConfig
                 ) -> None:
  """Raises Diverged naming a user whose adapted model is not finite
  (`support_finite` false, or a non-finite score of a ranked item): the
  export would store and serve NaN predictions, which its top-k silently
  drops. As `metarec eval`, it blames the inner loop: the meta-parameters
  are finite (checkpoints hold no other)."""
  broken = ~np.asarray(finite, bool)
  if bad_scores is not None:
    broken |= np.asarray(bad_scores) > 0
  if broken.any():
    raise Diverged(
        f"the adapted model of user {str(user_ids[np.argmax(broken)])!r} (and"
        f" {int(broken.sum()) - 1:,} more of its chunk of {len(broken):,})"
        " predicts ratings that are not finite", inner_settings(config))


class ChunkFunctions:
  """The compiled chunk functions of one export.

  Attributes:
    adapt: `(params, inner, support [C, W]) -> {path: [C, ...]}` in the
      export dtype, the float32 values of those for the ranking,
      `support_finite` of each user `[C]`, and `counts` `[C]`.
    top_k: `(params, fast [C, ...], user_features [C], rated [C, R],
      item_blocks, block_index) -> (scores [C, k], items [C, k],
      non-finite scores [C])`.
  """

  def __init__(self, model: Recommender, config: meta.MetaConfig, mesh: Mesh,
               *, dtype: str, k: int):
    self.task_sharding = runtime.task_sharding(mesh)
    self.replicated = runtime.replicated(mesh)

    def adapt_chunk(params, inner, support):
      fast = jax.vmap(lambda s: adapt_leaves(model, config, params, inner, s)
                      )(support)
      # Ranked as stored: from bfloat16 leaves, the server's ranking of a
      # user (which reads them) is topk.jsonl's, ties and all.
      stored = {p: v.astype(jnp.bfloat16).astype(v.dtype)
                for p, v in fast.items()} if dtype == "bfloat16" else fast
      finite = jax.vmap(lambda f, s: support_finite(model, params, f, s))(
          stored, support)
      counted = jax.vmap(lambda s: counts(model, config, params, s))(support)
      return cast(fast, dtype), stored, finite, counted

    adapt_sharded = jax.shard_map(
        adapt_chunk, mesh=mesh, in_specs=(P(), P(), P(AXIS)),
        out_specs=P(AXIS), check_vma=False)
    self.adapt = CompiledByShape(jax.jit(adapt_sharded), name="export_adapt")
    self.top_k = None
    if k:
      def rank_chunk(params, fast, user_features, rated, blocks, index):
        return jax.vmap(
            lambda f, u, r: top_k_one(model, params, f, u, r, blocks, index,
                                      k))(fast, user_features, rated)

      rank_sharded = jax.shard_map(
          rank_chunk, mesh=mesh,
          in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P(), P()),
          out_specs=P(AXIS), check_vma=False)
      self.top_k = CompiledByShape(jax.jit(rank_sharded),
                                   name="export_top_k")

  @property
  def compiles(self) -> int:
    return self.adapt.compiles + (self.top_k.compiles if self.top_k else 0)

  @property
  def compile_seconds(self) -> float:
    return self.adapt.compile_seconds + (
        self.top_k.compile_seconds if self.top_k else 0.0)
