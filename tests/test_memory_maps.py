"""The suite's guard against the per-process limit of memory maps
(`conftest.MAX_MAPS`): compiled programs hold maps until JAX's caches are
cleared, and clearing them gives the maps back."""

import jax.numpy as jnp

from conftest import memory_maps, release_maps


def test_clearing_the_caches_gives_the_compiled_programs_maps_back():
  before = memory_maps()
  for n in range(60):  # 60 new shapes: programs of their own
    (jnp.ones((1000 + n,)) * 2.0 + 1.0).block_until_ready()
  grown = memory_maps()
  assert grown > before + 100, (before, grown)
  assert not release_maps(limit=grown + 1000)  # below the limit: kept
  assert memory_maps() >= grown - 10
  assert release_maps(limit=0)
  assert memory_maps() < grown - 100, grown
