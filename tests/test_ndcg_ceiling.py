"""`tools/ndcg_ceiling.py`: nDCG of the truth plus noise of a given MAE."""

import importlib.util
import os
import sys

import numpy as np
import pytest

import datafiles
from conftest import ROOT, config_path
from metarec_jax import config_io
from metarec_jax.data import prepare, ratings_io
from metarec_jax.data import store as store_lib


def load_tool():
  spec = importlib.util.spec_from_file_location(
      "ndcg_ceiling_tool", os.path.join(ROOT, "tools", "ndcg_ceiling.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


tool = load_tool()


@pytest.fixture
def store(tmp_path):
  lines = ["user,item,rating"] + [f"u{u},i{i},{1 + (u + i) % 5}"
                                  for u in range(3) for i in range(6)]
  datafiles.write(str(tmp_path / "data" / "ratings.csv"),
                  "\n".join(lines) + "\n")
  data = config_io.load_config_file(config_path("default")).data
  data.name, data.root = "generic", str(tmp_path / "data")
  data.generic.id_features = True
  prepare.prepare(data, tmp_path / "store")
  return store_lib.open_store(tmp_path / "store")


def test_query_file_to_arrays_per_user(store, tmp_path):
  path = tmp_path / "query.csv"
  # Rows of u2 come before u0's, and u0 has fewer: padded with a mask.
  ratings_io.write_ratings(path, np.array(["u2", "u2", "u0"]),
                           np.array(["i1", "i4", "i5"]),
                           np.array([3.0, 2.0, 1.0]), store)
  true, ids, mask = tool.query_arrays(str(path), store)
  assert true.tolist() == [[1.0, 0.0], [3.0, 2.0]]
  assert mask.tolist() == [[True, False], [True, True]]
  assert store.item_ids[ids[1]].tolist() == ["i1", "i4"]


def test_noise_of_the_target_mae_and_its_ndcg():
  rng = np.random.default_rng(0)
  true = rng.integers(1, 6, size=(4000, 10)).astype(float)
  mask = np.ones_like(true, bool)
  ids = np.tile(np.arange(10), (4000, 1))
  exact = tool.noisy_scores(true, ids, mask, target_mae=0.0, k=3,
                            repeats=1, seed=0)
  assert exact["mae"] == 0.0 and exact["ndcg@3"] == pytest.approx(1.0)
  noisy = tool.noisy_scores(true, ids, mask, target_mae=0.7, k=3,
                            repeats=2, seed=0)
  assert noisy["mae"] == pytest.approx(0.7, abs=0.01)
  assert 0.5 < noisy["ndcg@3"] < 0.99
  worse = tool.noisy_scores(true, ids, mask, target_mae=1.5, k=3,
                            repeats=2, seed=0)
  assert worse["ndcg@3"] < noisy["ndcg@3"]
