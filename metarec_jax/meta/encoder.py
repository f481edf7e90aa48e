"""Adaptation by computing: encoders of the support set.

The algorithms `metric`, `amortised` and `hybrid` compute a task's
starting parameters from its support set in one forward pass instead of
(or before) gradient steps. The model says how a support row looks in its
learned space through one extra attribute of its loss:

    loss_fn.rows(params, batch) -> (x f[n, d], rating f[n], mask f[n])

(MeLU: the concatenated feature embeddings; IDEmb: the item vector and
bias). The encoder is the algorithm's, not the model's: its parameters are
learned in `inner` (`{"encoder": ...}`), like Meta-SGD's rates, so the
trainer, checkpoints, evaluation, export and serving carry it unchanged.

The encoder maps the support set to a FiLM modulation of every adapted
leaf along its last (output) axis:

    vector or scalar leaf:  leaf' = leaf * (1 + gamma) + beta
    matrix leaf (kernel):   leaf' = leaf * (1 + gamma)      (scales columns)

For a dense layer `x @ W + b` that is FiLM of its pre-activations. Two
encoders, with `c` the user's mean support rating:

- `prototype` (metric learner): the rating-weighted prototype of the
  support rows in the model's space, `z = [mean((r_i - c) x_i), mean(x_i),
  c]`, mapped linearly to the modulation. The query item is then scored by
  the model's head modulated by the prototype: a learned similarity
  between the user's prototype and the item (for IDEmb's dot product,
  `<u0 (1 + G z) + B z, v_q>`, a bilinear one).
- `set` (TaNP-style deterministic path, Lin et al. 2021): a per-row MLP
  over `[x_i, r_i - c, c]`, mean-pooled over the rows, then a bias-free MLP
  to the modulation.

Both output layers start at zero (the encoder starts as the identity, so
training starts from plain meta-parameters), and both are bias-free
functions of a masked mean: an empty support set pools to zero and gives
exactly the meta-parameters, with no NaN.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarec_jax.meta import paths
from metarec_jax.meta.config import MetaConfig

PyTree = Any


def _modulated(leaf) -> tuple[int, bool]:
  """(width of the leaf's output axis, whether it also gets a shift)."""
  shape = jnp.shape(leaf)
  return (shape[-1] if shape else 1), len(shape) < 2


def modulation_size(adapted: dict[str, jax.Array]) -> int:
  """Length of the modulation vector of the adapted leaves."""
  return sum(w * (2 if shift else 1)
             for w, shift in map(_modulated, adapted.values()))


def _split(adapted: dict[str, jax.Array],
           m: jax.Array) -> dict[str, tuple[jax.Array, jax.Array | None]]:
  """`{path: (gamma, beta or None)}`: the flat vector `m` cut per leaf."""
  out, at = {}, 0
  for path, leaf in adapted.items():
    width, shift = _modulated(leaf)
    gamma = m[at:at + width].reshape(jnp.shape(leaf)[-1:])
    at += width
    beta = None
    if shift:
      beta = m[at:at + width].reshape(jnp.shape(leaf)[-1:])
      at += width
    out[path] = gamma, beta
  return out


def _film(leaf: jax.Array, gamma: jax.Array,
          beta: jax.Array | None) -> jax.Array:
  new = leaf * (1.0 + gamma)
  if beta is not None:
    new = new + beta
  return new.astype(leaf.dtype)


def apply_modulation(adapted: dict[str, jax.Array],
                     m: jax.Array) -> dict[str, jax.Array]:
  """The adapted leaves FiLM-modulated by the flat vector `m`."""
  return {path: _film(adapted[path], *gb)
          for path, gb in _split(adapted, m).items()}


def _pool(x, rating, mask):
  """(mean support rating c, row weights mask / max(count, 1))."""
  w = mask.astype(x.dtype)
  n = jnp.maximum(jnp.sum(w), 1.0)
  c = jnp.sum(w * rating) / n
  return c, w / n


class Prototype(nn.Module):
  """The metric learner's map: rating-weighted prototype -> modulation."""

  size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, rating, mask):
    c, w = _pool(x, rating, mask)
    z = jnp.concatenate([((rating - c) * w) @ x, w @ x,
                         (c * jnp.sum(w))[None]])
    return nn.Dense(self.size, use_bias=False, param_dtype=self.dtype,
                    kernel_init=nn.initializers.zeros, name="project")(z)


class SetEncoder(nn.Module):
  """TaNP-style set encoder: per-row MLP, mean pool, bias-free MLP."""

  size: int
  hidden: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, rating, mask):
    c, w = _pool(x, rating, mask)
    rows = jnp.concatenate(
        [x, (rating - c)[:, None], jnp.broadcast_to(c, rating.shape)[:, None]],
        axis=-1)
    for i in range(2):
      rows = nn.relu(nn.Dense(self.hidden, param_dtype=self.dtype,
                              name=f"row{i + 1}")(rows))
    pooled = w @ rows  # zero for an empty support set
    h = nn.relu(nn.Dense(self.hidden, use_bias=False, param_dtype=self.dtype,
                         name="task")(pooled))
    return nn.Dense(self.size, use_bias=False, param_dtype=self.dtype,
                    kernel_init=nn.initializers.zeros, name="out")(h)


def _module(config: MetaConfig, adapted: dict[str, jax.Array]) -> nn.Module:
  leaves = list(adapted.values())
  dtype = jnp.result_type(*leaves) if leaves else jnp.float32
  size = modulation_size(adapted)
  if config.spec.encoder == "prototype":
    return Prototype(size, dtype=dtype)
  return SetEncoder(size, hidden=int(config.encoder_hidden), dtype=dtype)


def rows_of(loss_fn):
  """`loss_fn.rows`, what an encoder reads of a support set.

  Raises:
    ValueError: the loss has none (the model cannot be encoded).
  """
  rows = getattr(loss_fn, "rows", None)
  if rows is None:
    raise ValueError("an encoding meta.algorithm needs a loss with"
                     " rows(params, batch) -> (x, rating, mask); this"
                     " model's loss has none")
  return rows


def init(loss_fn, params: PyTree, support: PyTree, *, config: MetaConfig,
         rng: jax.Array) -> PyTree:
  """The encoder's parameters for `params` and the rows of `support`."""
  adapted = paths.partition(params, config.adapt).adapted
  x, rating, mask = jax.eval_shape(
      lambda: rows_of(loss_fn)(params, support))
  zeros = [jnp.zeros(a.shape, a.dtype) for a in (x, rating, mask)]
  return _module(config, adapted).init(rng, *zeros)["params"]


def _modulation(loss_fn, params: PyTree, support: PyTree,
                config: MetaConfig, inner: PyTree):
  """(the partition of `params`, the flat modulation of `support`)."""
  part = paths.partition(params, config.adapt)
  x, rating, mask = rows_of(loss_fn)(params, support)
  m = _module(config, part.adapted).apply({"params": inner["encoder"]},
                                          x, rating.astype(x.dtype), mask)
  return part, m


def encode(loss_fn, params: PyTree, support: PyTree, *, config: MetaConfig,
           inner: PyTree) -> PyTree:
  """`params` with the adapted leaves modulated by the encoded support set."""
  part, m = _modulation(loss_fn, params, support, config, inner)
  return part.merge(apply_modulation(part.adapted, m))


def shares_first_layer(lh, part: paths.Partition,
                       config: MetaConfig) -> bool:
  """Whether `task_loss_shared` can score this task: an encoder without
  gradient steps, over a `LinearHead` whose features read no adapted leaf
  and whose first-layer kernel is adapted (so it is modulated)."""
  return (bool(config.spec.encoder) and not config.inner_steps
          and lh.kernel in part.adapted and lh.features_fixed(part))


def task_loss_shared(lh, params: PyTree, task: PyTree, *, config: MetaConfig,
                     inner: PyTree, query_head) -> jax.Array:
  """An encoder's task loss with the first layer's modulation applied to
  its pre-activations instead of its kernel.

  Scaling the kernel's columns scales the pre-activations' columns,
  `X (W (1 + gamma)) = (X W) (1 + gamma)`, so every task multiplies its
  query features by the one shared `W`: under `vmap` that is one large
  matmul for all tasks, where the modulated kernel would be one `d x h`
  copy and one small matmul per task (and their transposes in the
  gradient). Equal to scoring `encode`'s parameters up to float rounding.
  `lh` is the model's `linear_head.LinearHead`; `query_head` scores the
  query's pre-activations (it reads neither kernel nor bias).
  """
  part, m = _modulation(lh, params, task["support"], config, inner)
  films = _split(part.adapted, m)
  w = part.adapted[lh.kernel]
  leaves = {p: (w if p == lh.kernel else _film(part.adapted[p], *gb))
            for p, gb in films.items()}
  merged = part.merge(leaves)
  flat = dict(zip(paths.leaf_paths(merged), jax.tree.leaves(merged)))
  query = task["query"]
  gamma = films[lh.kernel][0]
  a = lh.dot(lh.featurize(merged, query), w) * (1.0 + gamma).astype(w.dtype)
  return query_head(merged, a + flat[lh.bias], query)
