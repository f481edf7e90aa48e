"""The functional core of metarec_jax: pure functions over pytrees.

    loss_fn(params, batch) -> scalar
    adapt(loss_fn, params, support, *, config, inner=None) -> adapted_params
    task_loss(loss_fn, params, task, *, config, inner=None,
              query_loss_fn=None) -> scalar
    meta_loss(loss_fn, params, tasks, *, config, inner=None,
              query_loss_fn=None) -> scalar
    init_inner(params, *, config[, loss_fn, support, rng]) -> inner
    meta_grad(loss_fn, meta_params, tasks, *, config,
              query_loss_fn=None) -> (loss, grads)

Encoding algorithms (`metric`, `amortised`, `hybrid`) also read
`loss_fn.rows(params, batch) -> (x, rating, mask)`; see `meta.encoder`.
An ensemble's `loss_fn` is a `Members` (`meta.members`). `query_loss_fn`
(default `loss_fn`) scores the query, e.g. with a ranking term the support
loss lacks.
"""

from metarec_jax.meta.config import (ALGORITHMS, INNER_OPTIMIZERS, Algorithm,
                                     MetaConfig)
from metarec_jax.meta.core import adapt, meta_grad, meta_loss, task_loss
from metarec_jax.meta.inner import init_inner, inner_optimizer
from metarec_jax.meta.linear_head import LinearHead
from metarec_jax.meta.members import Members
from metarec_jax.meta import encoder, paths
from metarec_jax.meta.paths import adapt_mask, leaf_paths

__all__ = [
    "ALGORITHMS", "Algorithm", "INNER_OPTIMIZERS", "LinearHead", "MetaConfig",
    "Members",
    "adapt", "encoder",
    "adapt_mask", "init_inner", "inner_optimizer", "leaf_paths", "meta_grad",
    "meta_loss", "task_loss",
]
