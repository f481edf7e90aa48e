"""Serving computations over a batch of users, each vmapped from the
one-user function of `compute`.

Every argument but the (meta-)parameters and the item tables has a leading
user axis `[B]`. `Export` jits these with its model and config bound; a
server pads B (and the other sizes) to a few buckets so that it runs
programs compiled at start-up.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from metarec_jax import meta
from metarec_jax.export import compute
from metarec_jax.models import Recommender

PyTree = Any


def adapt_users(model: Recommender, config: meta.MetaConfig, params: PyTree,
                inner: PyTree | None, support: PyTree) -> dict[str, jax.Array]:
  """`{path: [B, ...]}`: the adapted leaves of each user of `support`."""
  return jax.vmap(lambda s: compute.adapt_leaves(model, config, params, inner,
                                                 s))(support)


def score_users(model: Recommender, params: PyTree,
                fast: dict[str, jax.Array], user_features: dict[str, jax.Array],
                item_tables: dict[str, jax.Array],
                index: jax.Array) -> jax.Array:
  """`[B, N]`: each user's predicted ratings of the items `index [B, N]`."""

  def one(f, u, idx):
    items = {n: t[idx] for n, t in item_tables.items()}
    return compute.score_items(model, params, f, u, items)

  return jax.vmap(one)(fast, user_features, index)


def top_k_users(model: Recommender, params: PyTree,
                fast: dict[str, jax.Array], user_features: dict[str, jax.Array],
                item_tables: dict[str, jax.Array], excluded: jax.Array, *,
                k: int) -> tuple[jax.Array, jax.Array]:
  """Each user's `k` best items of the whole catalogue but `excluded`.

  Args:
    excluded: bool `[B, I]`: items a user must not get (rated ones).

  Returns:
    (scores f32 [B, k], item positions int32 [B, k]), best first; -inf
    scores past a user's candidates. `lax.top_k` puts the lower position
    first among equal scores.
  """

  def one(f, u, ex):
    scores = compute.score_items(model, params, f, u, item_tables)
    scores = jnp.where(ex, -jnp.inf, scores.astype(jnp.float32))
    return jax.lax.top_k(scores, k)

  return jax.vmap(one)(fast, user_features, excluded)
