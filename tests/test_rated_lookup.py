"""Export's top-k leaves out each user's rated items by a binary search.

Comparing every rated item with every item of a block cost O(R * B) per
block, R the chunk's longest rated list: one user with 50,000 ratings
made an export with `--top_k` run for many minutes (seconds without it).
"""

import jax
import jax.numpy as jnp
import numpy as np

from conftest import model_section
from metarec_jax import models
from metarec_jax.data.schema import FeatureSpec, item_id_spec
from metarec_jax.export import compute


def test_membership_equals_the_rated_set_with_pads_and_gaps():
  rng = np.random.default_rng(0)
  for size in (1, 2, 7, 64):
    items = rng.choice(200, size=rng.integers(0, size + 1), replace=False)
    rated = np.full(size, -1, np.int32)
    rated[:len(items)] = items
    rng.shuffle(rated)
    idx = np.arange(-1, 210, dtype=np.int32)  # -1: a slot past the catalogue
    got = np.asarray(jax.jit(compute.rated_lookup(jnp.asarray(rated)))(idx))
    want = np.isin(idx, items)
    np.testing.assert_array_equal(got[1:], want[1:])


def test_no_rated_list_excludes_nothing():
  is_rated = compute.rated_lookup(jnp.zeros((0,), jnp.int32))
  assert not np.any(np.asarray(is_rated(jnp.arange(5))))


def _sizes(jaxpr):
  """The element count of every value a jaxpr (and its sub-jaxprs: a
  scan's body) computes."""
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      yield int(np.prod(var.aval.shape))
    for value in eqn.params.values():
      inner = getattr(value, "jaxpr", value)
      if hasattr(inner, "eqns"):
        yield from _sizes(inner)


def test_no_array_of_top_k_grows_with_rated_times_block():
  items, rated, block = 256, 4096, 64
  fields = (FeatureSpec("gender", "user", "categorical", 3),
            item_id_spec(items))
  model = models.build(model_section({"name": "melu", "item_id": True,
                                      "embed_dim": 4, "hidden": (8,)}),
                       fields, rating_mean=3.0)
  params = model.init(jax.random.PRNGKey(0))
  user = {"gender": jnp.asarray(1, jnp.int32)}
  blocks = {"item_id": jnp.arange(1, items + 1, dtype=jnp.int32).reshape(
      items // block, block)}
  index = jnp.arange(items, dtype=jnp.int32).reshape(items // block, block)
  jaxpr = jax.make_jaxpr(lambda r: compute.top_k_one(
      model, params, {}, user, r, blocks, index, 5))(
          jnp.full((rated,), -1, jnp.int32))
  assert max(_sizes(jaxpr.jaxpr)) < rated * 4  # not rated * block
