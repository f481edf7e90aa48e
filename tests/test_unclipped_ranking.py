"""nDCG ranks the served predictions before the clip to the rating scale.

On data of few rating values (only 1s and 5s, likes and dislikes) many
predictions pass the scale's ends; clipped, they tied (then ordered by item
id; now counted at their mean gain), so the reported nDCG was not that of
the ranking the server serves (`export.topk` ranks unclipped).
"""

import numpy as np
import pytest

from metarec_jax import config_io, experiment, runtime
from metarec_jax.eval import metrics, predictions_file, ranking
from metarec_jax.eval.evaluate import BASELINE, Evaluator, Predictions


def test_summary_scores_clipped_and_ranks_unclipped():
  true = np.array([[1.0, 5.0, 5.0]])
  raw = np.array([[5.2, 5.9, 0.4]])  # the 5 ranks above the 1, unclipped
  clipped = np.clip(raw, 1, 5)
  mask = np.ones_like(true, bool)  # clipped: the 1 ties the first 5
  tied = metrics.summary(clipped, true, mask, floor=1)
  ranked = metrics.summary(clipped, true, mask, floor=1, rank_by=raw)
  assert tied["ndcg@1"] == pytest.approx((1 + 31) / 2 / 31)  # 2^r - 1
  assert ranked["ndcg@1"] == 1.0
  assert ranked["mae"] == tied["mae"] == metrics.mae(clipped, true, mask)
  assert ranked["rmse"] == tied["rmse"]


def test_ranked_reads_the_unclipped_column_where_a_file_has_one():
  columns = {"prediction": np.array([5.0]), "prediction_unclipped":
             np.array([5.5]), BASELINE: np.array([4.0])}
  assert predictions_file.ranked(columns, "prediction")[0] == 5.5
  assert predictions_file.ranked(columns, BASELINE)[0] == 4.0  # older file


@pytest.fixture(scope="module")
def evaluator(tiny_metasgd_run):
  config = config_io.read_workdir_config(tiny_metasgd_run)
  exp = experiment.build(config, tiny_metasgd_run, log=lambda *a: None)
  return Evaluator(exp, runtime.make_mesh())


def _predictions(raw, true, items, support_ratings):
  lo, hi = float(true.min()), float(true.max())
  support = np.array([[5, 6]])
  return Predictions(
      adapted=np.clip(raw, lo, hi), unadapted=np.clip(raw, lo, hi),
      true=true, mask=np.ones_like(true, bool), items=items,
      support_items=support,
      support_ratings=np.full(support.shape, support_ratings, np.float32),
      support_mask=np.ones_like(support, bool), adapted_unclipped=raw,
      ranked=raw)  # no median map: the served values before the clip


def test_eval_ranks_the_model_unclipped(evaluator):
  lo, hi = evaluator.lo, evaluator.hi
  items = np.array([[1, 2, 3, 4]])
  true = np.array([[lo, hi, lo, hi]], np.float32)
  raw = np.array([[hi + 0.2, hi + 0.9, lo - 0.5, hi + 0.5]], np.float32)
  p = _predictions(raw, true, items, hi)
  got = evaluator.scenario_metrics(p, 1)
  assert got["ndcg@1"] == 1.0  # item 2, not item 1 (the lower id)
  assert got["ndcg@3"] == pytest.approx(
      metrics.ndcg(raw, true, p.mask, 3, floor=lo))
  assert got["mae"] == pytest.approx(metrics.mae(p.adapted, true, p.mask))


def test_eval_ranks_the_baseline_unclipped(evaluator):
  lo, hi = evaluator.lo, evaluator.hi
  means = evaluator.baselines.item_mean
  # The best item by its mean after three items of lower ids and lower
  # means: clipped (a user bias far above the scale), the lowest id wins.
  top = 4 + int(np.argmax(means[4:]))
  lower = [i for i in range(1, top) if means[i] < means[top]][:3]
  items = np.array([lower + [top]])
  true = np.array([[lo, lo, lo, hi]], np.float32)
  p = _predictions(np.full(true.shape, hi, np.float32), true, items,
                   hi + 50)
  got = evaluator.scenario_metrics(p, 1)["baselines"][BASELINE]
  base = evaluator.baseline_predictions(p, clip=False)[BASELINE]
  assert (base > hi).all()  # clipped, every query item would tie
  assert got["ndcg@1"] == 1.0
  clipped = evaluator.baseline_predictions(p)[BASELINE]
  assert got["mae"] == pytest.approx(metrics.mae(clipped, true, p.mask))


def test_the_order_gap_to_the_baseline_carries_its_standard_error(
    evaluator):
  """`ndcg@3_gap_se`: the standard error of the per-task gap between the
  model's nDCG@3 and the baseline's, as ranked (what `verdicts` weighs a
  worse order against)."""
  lo, hi = evaluator.lo, evaluator.hi
  r = np.random.default_rng(0)
  items = r.integers(1, 50, (6, 5))
  true = r.choice([lo, hi], (6, 5)).astype(np.float32)
  raw = r.uniform(lo, hi, (6, 5)).astype(np.float32)
  p = _predictions(raw, true, items, hi)
  got = evaluator.scenario_metrics(p, 6)["ndcg@3_gap_se"]
  base = evaluator.baseline_predictions(p, clip=False)[BASELINE]
  gap = (metrics.ndcg_per_task(raw, true, p.mask, 3, floor=lo)
         - metrics.ndcg_per_task(base, true, p.mask, 3, floor=lo))
  assert got == pytest.approx(gap.std(ddof=1) / np.sqrt(6)) and got > 0


def test_the_mae_gap_to_the_baseline_carries_its_standard_error(evaluator):
  """`mae_gap_se`: the standard error of the per-task gap between the
  model's MAE and the baseline's (clipped, as scored), over the tasks
  with query ratings (what the support curve's warning weighs a loss
  against)."""
  lo, hi = evaluator.lo, evaluator.hi
  r = np.random.default_rng(1)
  items = r.integers(1, 50, (7, 5))
  true = r.choice([lo, hi], (7, 5)).astype(np.float32)
  raw = r.uniform(lo - 1, hi + 1, (7, 5)).astype(np.float32)
  p = _predictions(raw, true, items, hi)
  p.mask[6] = False  # a task without query ratings: left out
  p.mask[0, 2:] = False  # one of 2 ratings: it weighs less in the MAE
  got = evaluator.scenario_metrics(p, 7)["mae_gap_se"]
  base = evaluator.baseline_predictions(p)[BASELINE]
  gap = (metrics.mae_per_task(np.clip(raw, lo, hi), true, p.mask)
         - metrics.mae_per_task(base, true, p.mask))[:6]
  # The micro-averaged gap is the count-weighted mean of the task gaps;
  # its error, by the bootstrap over tasks' formula for a weighted mean.
  w = p.mask.sum(axis=1)[:6] / p.mask.sum()
  mean = (w * gap).sum()
  assert mean == pytest.approx(
      metrics.mae(np.clip(raw, lo, hi), true, p.mask)
      - metrics.mae(base, true, p.mask))
  want = np.sqrt((w ** 2 * (gap - mean) ** 2).sum() * 6 / 5)
  assert got == pytest.approx(want) and got > 0
  # Equal counts: the plain standard error of the mean task gap.
  assert ranking.gap_se(gap, 0 * gap, np.ones(6)) == pytest.approx(
      gap.std(ddof=1) / np.sqrt(6))
