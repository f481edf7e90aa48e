"""Loss functions whose first adapted layer is linear in fixed features.

Many recommenders (MeLU among them) compute features from parameters the
inner loop does not adapt (embedding tables) and feed them to an adapted
MLP. A `LinearHead` states that structure:

    loss(params, batch) = head(params, X @ W + b, batch),
    X = featurize(params, batch)

which lets the core do two things, both exact:

1. *Hoisting*: `X` is computed once per task instead of once per inner step,
   and the inner loop never differentiates through the embedding lookups.
2. *Dual form* (plain SGD inner loop with one scalar rate per step for `W`
   and `b`): every inner gradient of `W` is `X^T dA` for the gradient `dA`
   of the pre-activations, so after k steps `W_k = W - X^T D_k` with
   `D_k = sum_j lr_j dA_j`. The support pre-activations then evolve as
   `A_{k+1} = A_k - lr_k (X X^T) dA_k - lr'_k 1 1^T dA_k`, and the query's are
   `Aq_K = Xq W + b - (Xq X^T) D_K - 1 d_K`. With n support rows, width d
   and h units this replaces the per-step `n x d x h` products of the first
   layer (and their second-order transposes) by `n x n x h` ones and moves
   `X W` out of the per-task work into one large shared matmul. For MeLU
   (d=256, h=64, n<=64) that is most of the arithmetic of the meta-step.
   Values and gradients are those of the plain formulation up to float
   rounding (tested in float64).

A `LinearHead` is itself a `loss_fn(params, batch)`, so every function of
the core accepts it and falls back to the plain computation where the
structure cannot be used (the features read adapted parameters, Meta-SGD's
per-element rates, an inner optimizer other than SGD).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from metarec_jax.meta import inner as inner_lib
from metarec_jax.meta import paths
from metarec_jax.meta.config import MetaConfig

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LinearHead:
  """`loss(params, batch) = head(params, featurize(params, batch) @ W + b, batch)`.

  Attributes:
    featurize: `(params, batch) -> X`, `X: f32[n, d]`; must read only the
      parameters matched by `featurize_reads`.
    head: `(params, a, batch) -> scalar loss` for the first layer's
      pre-activations `a: f32[n, h]`; must not read `kernel` or `bias`.
    kernel: path of `W: f32[d, h]`.
    bias: path of `b: f32[h]`.
    featurize_reads: regexes of the parameter paths `featurize` reads.
    rows: `(params, batch) -> (x, rating, mask)`, the support rows as the
      encoding algorithms read them (`meta.encoder`); None: the model
      offers none.
    compute_dtype: the dtype the products of features and kernels (the
      first layer and the dual form's) run in; None: the operands' own
      (`model.compute_dtype`, see `models.precision`).
  """

  featurize: Callable[[PyTree, PyTree], jax.Array]
  head: Callable[[PyTree, jax.Array, PyTree], jax.Array]
  kernel: str
  bias: str
  featurize_reads: tuple[str, ...]
  rows: Callable[[PyTree, PyTree], tuple] | None = None
  compute_dtype: Any = None

  def dot(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """`x @ y`, in `compute_dtype` when one is set."""
    if self.compute_dtype is None:
      return x @ y
    return x.astype(self.compute_dtype) @ y.astype(self.compute_dtype)

  def __call__(self, params: PyTree, batch: PyTree) -> jax.Array:
    return self.head_from_features(params, self.featurize(params, batch),
                                   batch)

  def head_from_features(self, params: PyTree, x: jax.Array,
                         batch: PyTree) -> jax.Array:
    flat = dict(zip(paths.leaf_paths(params), jax.tree.leaves(params)))
    return self.head(params, self.dot(x, flat[self.kernel]) + flat[self.bias],
                     batch)

  def features_fixed(self, part: paths.Partition) -> bool:
    """True when no adapted leaf is read by `featurize`."""
    return not any(
        paths.matches_any(p, self.featurize_reads) for p in part.adapted)

  def dual_applies(self, config: MetaConfig, part: paths.Partition) -> bool:
    """Whether the dual form can run the inner loop: `meta.dual_form`, plain
    SGD with one scalar rate per step (`ALGORITHMS`), `W` and `b` adapted,
    fixed features."""
    adapted = part.adapted
    return (config.dual_form and config.inner_optimizer == "sgd"
            and config.spec.dual_form and config.inner_steps > 0
            and self.kernel in adapted and self.bias in adapted
            and self.features_fixed(part))

  def query_head(self, query_loss_fn) -> Callable | None:
    """The head that scores the query set in dual form: this one when the
    query loss is this loss (`query_loss_fn` None), the query loss's when
    it is this loss with another head (`dataclasses.replace(self,
    head=...)`, e.g. `models.recommender.with_loss`); else None."""
    if query_loss_fn is None:
      return self.head
    if (isinstance(query_loss_fn, LinearHead)
        and dataclasses.replace(query_loss_fn, head=self.head) == self):
      return query_loss_fn.head
    return None


def dual_form(loss_fn, config: MetaConfig, part: paths.Partition,
              query_loss_fn=None) -> Callable | None:
  """The query head with which the dual form runs one task, or None where
  the plain inner loop must: `loss_fn` is not a `LinearHead`, its structure
  cannot be used (`LinearHead.dual_applies`), or the query loss is not a
  head over the same features (`LinearHead.query_head`)."""
  if isinstance(loss_fn, LinearHead) and loss_fn.dual_applies(config, part):
    return loss_fn.query_head(query_loss_fn)
  return None


def _dual_loop(lh: LinearHead, part: paths.Partition, support: PyTree,
               config: MetaConfig, inner: PyTree | None,
               query: PyTree | None, query_head=None):
  """Runs the inner loop in dual form.

  Returns:
    (adapted leaves other than W and b, the support features X (stopped in
    first-order mode), D_K, d_K, the multi-step query loss or None).
  """
  second_order = config.second_order
  params = part.merge(part.adapted)
  w, b = part.adapted[lh.kernel], part.adapted[lh.bias]
  rest0 = {p: v for p, v in part.adapted.items()
           if p not in (lh.kernel, lh.bias)}
  xs = lh.featurize(params, support)
  a0 = lh.dot(xs, w) + b
  # In first-order mode nothing computed from the support may carry a
  # gradient into the meta-update, exactly as stop_gradient(inner grads).
  xs_inner = xs if second_order else jax.lax.stop_gradient(xs)
  gram = lh.dot(xs_inner, xs_inner.T)
  lr_w = inner_lib.step_rates(config, inner, lh.kernel, w.dtype)
  lr_b = inner_lib.step_rates(config, inner, lh.bias, b.dtype)
  opt = inner_lib.inner_optimizer(config, inner)

  msl = bool(config.msl_weights) and query is not None
  if msl:
    xq = lh.featurize(params, query)
    aq0 = lh.dot(xq, w) + b
    cross = lh.dot(xq, xs_inner.T)

  def merged(rest):
    return part.merge({**rest, lh.kernel: w, lh.bias: b})

  def support_loss(a, rest):
    return lh.head(merged(rest), a, support)

  def step(carry, xs_k):
    a, rest, opt_state, d_w, d_b = carry
    k, weight = xs_k
    g_a, g_rest = jax.grad(support_loss, argnums=(0, 1))(a, rest)
    if not second_order:
      g_a, g_rest = jax.lax.stop_gradient((g_a, g_rest))
    g_b = jnp.sum(g_a, axis=0)
    a = a - lr_w[k] * lh.dot(gram, g_a) - lr_b[k] * g_b
    d_w = d_w + lr_w[k] * g_a
    d_b = d_b + lr_b[k] * g_b
    updates, opt_state = opt.update(g_rest, opt_state, rest)
    rest = optax.apply_updates(rest, updates)
    out = None
    if msl:
      out = weight * (query_head or lh.head)(merged(rest),
                                             aq0 - lh.dot(cross, d_w) - d_b,
                                             query)
    return (a, rest, opt_state, d_w, d_b), out

  if config.remat:
    step = jax.checkpoint(step)
  steps = jnp.arange(config.inner_steps)
  weights = (jnp.asarray(config.msl_weights, a0.dtype) if msl
             else jnp.zeros((config.inner_steps,), a0.dtype))
  carry = (a0, rest0, opt.init(rest0), jnp.zeros_like(a0),
           jnp.zeros_like(b))
  (_, rest, _, d_w, d_b), per_step = jax.lax.scan(
      step, carry, (steps, weights), unroll=config.unroll)
  return rest, xs_inner, d_w, d_b, (jnp.sum(per_step) if msl else None)


def adapt_dual(lh: LinearHead, part: paths.Partition, support: PyTree, *,
               config: MetaConfig, inner: PyTree | None) -> PyTree:
  """`adapt` in dual form: materialises `W_K = W - X^T D_K` at the end."""
  rest, xs, d_w, d_b, _ = _dual_loop(lh, part, support, config, inner, None)
  w, b = part.adapted[lh.kernel], part.adapted[lh.bias]
  return part.merge({**rest, lh.kernel: w - lh.dot(xs.T, d_w), lh.bias: b - d_b})


def task_loss_dual(lh: LinearHead, part: paths.Partition, task: PyTree, *,
                   config: MetaConfig, inner: PyTree | None,
                   query_head=None) -> jax.Array:
  """`task_loss` in dual form: never materialises the adapted kernel.

  `query_head` scores the query set (default: `lh.head`)."""
  query_head = query_head or lh.head
  query = task["query"]
  rest, xs, d_w, d_b, msl = _dual_loop(lh, part, task["support"], config,
                                       inner, query, query_head)
  if msl is not None:
    return msl
  params = part.merge(part.adapted)
  w, b = part.adapted[lh.kernel], part.adapted[lh.bias]
  xq = lh.featurize(params, query)
  aq = lh.dot(xq, w) + b - lh.dot(lh.dot(xq, xs.T), d_w) - d_b
  return query_head(part.merge({**rest, lh.kernel: w, lh.bias: b}), aq,
                    query)
