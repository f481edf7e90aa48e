"""The suite's guard against the per-process limit of memory maps
(`conftest.MAX_MAPS`): compiled programs hold maps until JAX's caches are
cleared, clearing them gives the maps back, and every test runs with the
guard."""

import os

import jax.numpy as jnp
import pytest

from conftest import MAPS_FILE, MAX_MAPS, memory_maps, release_maps

pytestmark = pytest.mark.skipif(not os.path.exists(MAPS_FILE),
                                reason="no /proc/self/maps to count")


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


def test_every_test_runs_with_the_guard_well_below_the_kernels_limit(request):
  assert "bounded_memory_maps" in request.fixturenames
  limit_file = "/proc/sys/vm/max_map_count"
  if os.path.exists(limit_file):
    with open(limit_file, encoding="utf-8") as f:
      assert MAX_MAPS <= int(f.read()) // 2
