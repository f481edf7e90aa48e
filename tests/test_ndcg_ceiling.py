"""`tools/ndcg_ceiling.py`: reference predictors of the query ratings."""

import contextlib
import importlib.util
import io
import json
import os
import sys

import numpy as np
import pytest

from cli_run import last_json, metarec
from conftest import ROOT


def load_tool():
  spec = importlib.util.spec_from_file_location(
      "ndcg_ceiling_tool", os.path.join(ROOT, "tools", "ndcg_ceiling.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


tool = load_tool()


def test_noise_of_the_target_mae_and_its_ndcg():
  rng = np.random.default_rng(0)
  true = rng.integers(1, 6, size=(4000, 10)).astype(float)
  mask = np.ones_like(true, bool)
  exact = tool.noisy_scores(true, mask, target_mae=0.0, k=3,
                            repeats=1, seed=0)
  assert exact["mae"] == 0.0 and exact["ndcg@3"] == pytest.approx(1.0)
  assert exact["ndcg@3_linear"] == pytest.approx(1.0)
  noisy = tool.noisy_scores(true, mask, target_mae=0.7, k=3,
                            repeats=2, seed=0)
  assert noisy["mae"] == pytest.approx(0.7, abs=0.01)
  assert 0.5 < noisy["ndcg@3"] < noisy["ndcg@3_linear"] < 0.99
  worse = tool.noisy_scores(true, mask, target_mae=1.5, k=3,
                            repeats=2, seed=0)
  assert worse["ndcg@3"] < noisy["ndcg@3"]


def test_normal_equations_per_group_with_empty_groups():
  rng = np.random.default_rng(0)
  group = np.sort(rng.choice([0, 2, 3, 6], size=50))
  x, y = rng.normal(size=(50, 4)), rng.normal(size=50)
  gram, rhs = tool._normal_equations(x, y, group, 8)
  for g in range(8):
    rows = group == g
    np.testing.assert_allclose(gram[g], x[rows].T @ x[rows], atol=1e-12)
    np.testing.assert_allclose(rhs[g], x[rows].T @ y[rows], atol=1e-12)
  assert not gram[[1, 4, 5, 7]].any()


def test_biased_mf_recovers_held_out_low_rank_ratings():
  rng = np.random.default_rng(0)
  nu, ni = 300, 200
  p, q = rng.normal(size=(nu, 3)), rng.normal(size=(ni, 3))
  full = 3.0 + rng.normal(0, 0.5, nu)[:, None] + p @ q.T * 0.5
  users, items = np.nonzero(rng.random((nu, ni)) < 0.3)
  ratings = full[users, items] + rng.normal(0, 0.1, len(users))
  held = rng.random(len(users)) < 0.1
  predict = tool.fit_biased_mf(users[~held], items[~held], ratings[~held],
                               num_users=nu, num_items=ni, dim=3, reg=1.0,
                               iters=10)
  err = np.abs(predict(users[held], items[held]) - ratings[held]).mean()
  baseline = np.abs(ratings[~held].mean() - ratings[held]).mean()
  assert err < 0.25 * baseline


def test_reference_rows_on_a_written_task_folder(ml1m_tiny_run, tmp_path):
  workdir, _ = ml1m_tiny_run
  out = metarec("eval", f"--workdir={workdir}",
                f"--write_tasks={tmp_path / 'tasks'}")
  assert out.returncode == 0, out.stderr
  report = last_json(out)["scenarios"]
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    tool.main([f"--workdir={workdir}", f"--tasks={tmp_path / 'tasks'}",
               "--mf", "--mf_iters=3", "--mae=0.7", "--repeats=2"])
  rows = [json.loads(line) for line in printed.getvalue().splitlines()]
  by = {(r["scenario"], r["predictor"]): r for r in rows}
  scenarios = [s for s in ("W", "UC", "IC", "UIC") if report[s]["tasks"]]
  assert {s for s, _ in by} == set(scenarios)
  for s in scenarios:
    # The model's and baselines' rows are the report's own numbers.
    for predictor, expected in (
        ("prediction", report[s]),
        ("item_mean_user_bias",
         report[s]["baselines"]["item_mean_user_bias"])):
      for key in ("mae", "ndcg@1", "ndcg@3"):
        assert by[s, predictor][key] == pytest.approx(expected[key],
                                                      abs=2e-5)
    mf = by[s, "mf"]
    assert mf["tasks"] == report[s]["tasks"]
    assert 0 < mf["mae"] < by[s, "global_mean"]["mae"]
    assert 0 < mf["ndcg@3"] <= mf["ndcg@3_linear"] <= 1
    assert by[s, "noise@0.7"]["mae"] == pytest.approx(0.7, abs=0.1)
