"""Metrics against hand-computed values."""

import itertools
import math

import numpy as np
import pytest

from metarec_jax.eval import metrics
from metarec_jax.data.baselines import BaselineStats


def test_mae_and_rmse_skip_padding():
  pred = np.array([[3.0, 4.0, 0.0], [2.0, 9.0, 9.0]])
  true = np.array([[4.0, 4.0, 5.0], [4.0, 1.0, 1.0]])
  mask = np.array([[True, True, False], [True, False, False]])
  assert metrics.mae(pred, true, mask) == pytest.approx((1 + 0 + 2) / 3)
  assert metrics.rmse(pred, true, mask) == pytest.approx(math.sqrt(5 / 3))
  assert metrics.mae(pred, true, np.zeros_like(mask)) is None


def test_ndcg_by_hand_with_tied_items_at_their_mean_gain():
  # True ratings 5, 3, 4; the predictions tie the first two.
  pred = np.array([[4.0, 4.0, 2.0]])
  true = np.array([[5.0, 3.0, 4.0]])
  mask = np.ones((1, 3), bool)
  # Ranks 1 and 2 each count the tie's mean gain, then the rating 4.
  g = lambda r: 2 ** r - 1
  tie = (g(5) + g(3)) / 2
  dcg3 = tie / math.log2(2) + tie / math.log2(3) + g(4) / math.log2(4)
  idcg3 = g(5) / math.log2(2) + g(4) / math.log2(3) + g(3) / math.log2(4)
  assert metrics.ndcg(pred, true, mask, 3) == pytest.approx(dcg3 / idcg3)
  assert metrics.ndcg(pred, true, mask, 1) == pytest.approx(tie / g(5))
  # A perfect ranking scores 1; padding never ranks.
  pred2 = np.array([[5.0, 3.0, 4.0, 9.0]])
  true2 = np.array([[5.0, 3.0, 4.0, 1.0]])
  mask2 = np.array([[True, True, True, False]])
  assert metrics.ndcg(pred2, true2, mask2, 3) == pytest.approx(1.0)


def test_a_real_minus_infinity_ranks_above_the_padding_not_tied_to_it():
  pred = np.array([[1.0, -np.inf, 7.0]])
  true = np.array([[5.0, 3.0, 1.0]])
  mask = np.array([[True, True, False]])
  assert metrics.ndcg(pred, true, mask, 3) == 1.0
  # Equal gains tied: their mean may round above the gain, never nDCG.
  same = np.full((1, 3), 0.1)
  assert metrics.ndcg(np.zeros((1, 3)), same, np.ones((1, 3), bool), 3,
                      gain="linear") <= 1.0


@pytest.mark.parametrize("gain", metrics.GAINS)
def test_tied_ndcg_is_the_mean_over_every_order_of_the_ties(gain):
  """The expected nDCG of a random tie-break, whatever the items' order
  in the row (an item-id tie-break made the item-mean baseline's nDCG on
  new items, all tied, a function of their IDs)."""
  rng = np.random.default_rng(0)
  for _ in range(40):
    n = int(rng.integers(1, 7))
    pred = rng.integers(0, 3, size=(1, n)).astype(float)  # many ties
    true = rng.integers(1, 6, size=(1, n)).astype(float)
    mask = np.ones((1, n), bool)
    for k in (1, 3):
      # Every order that keeps the predictions sorted, each equally likely.
      orders = [p for p in itertools.permutations(range(n))
                if all(pred[0, p[i]] >= pred[0, p[i + 1]]
                       for i in range(n - 1))]
      by_order = [metrics.ndcg(np.arange(n, 0, -1.0)[None, :],
                               true[:, list(p)], mask, k, gain=gain)
                  for p in orders]
      got = metrics.ndcg(pred, true, mask, k, gain=gain)
      assert got == pytest.approx(np.mean(by_order))
      shuffled = rng.permutation(n)
      assert metrics.ndcg(pred[:, shuffled], true[:, shuffled], mask, k,
                          gain=gain) == pytest.approx(got)


def test_linear_gain_ndcg_by_hand():
  # Ratings 3, 5, 4 ranked in that order, with the gain r, not 2^r - 1.
  pred = np.array([[4.0, 3.0, 2.0]])
  true = np.array([[3.0, 5.0, 4.0]])
  mask = np.ones((1, 3), bool)
  dcg3 = 3 / math.log2(2) + 5 / math.log2(3) + 4 / math.log2(4)
  idcg3 = 5 / math.log2(2) + 4 / math.log2(3) + 3 / math.log2(4)
  assert metrics.ndcg(pred, true, mask, 3, gain="linear") == (
      pytest.approx(dcg3 / idcg3))
  # The linear gain forgives more: the same ranking scores higher.
  assert dcg3 / idcg3 > metrics.ndcg(pred, true, mask, 3)
  with pytest.raises(ValueError, match="gain must be one of"):
    metrics.ndcg(pred, true, mask, 3, gain="log")


def test_ndcg_on_a_scale_below_zero_shifts_it_to_zero_and_stays_in_0_1():
  # A -10..10 scale (jokes): the gains of ratings -9, 2, -4 as if 1, 12, 6.
  pred = np.array([[1.0, 0.0, 2.0]])  # ranks -4, -9, 2: a poor ranking
  true = np.array([[-9.0, 2.0, -4.0]])
  mask = np.ones((1, 3), bool)
  for gain, g in (("exponential", lambda r: 2 ** r - 1),
                  ("linear", lambda r: r)):
    dcg = g(6) / math.log2(2) + g(1) / math.log2(3) + g(12) / math.log2(4)
    idcg = g(12) / math.log2(2) + g(6) / math.log2(3) + g(1) / math.log2(4)
    got = metrics.ndcg(pred, true, mask, 3, gain=gain, floor=-10)
    assert got == pytest.approx(dcg / idcg) and 0 < got < 1
  # Unshifted, those gains are negative and nDCG leaves [0, 1]: what the
  # floor prevents. A scale from 0 or above keeps its gain exactly.
  assert metrics.ndcg(pred, true, mask, 1, gain="linear") < 0
  stars = np.array([[5.0, 3.0, 4.0]])
  for floor in (0.0, 1.0, 0.5):
    assert metrics.summary(pred, stars, mask, floor=floor) == (
        metrics.summary(pred, stars, mask))


def test_item_mean_user_bias_baseline_by_hand():
  stats = BaselineStats(global_mean=3.0,
                        item_mean=np.array([4.0, 2.0, 3.5]),
                        rating_range=(1.0, 5.0))
  # Support: item 0 rated 5 (residual +1), item 1 rated 3 (residual +1).
  pred = stats.predict(np.array([[0, 1]]), np.array([[5.0, 3.0]]),
                       np.array([[True, True]]), np.array([[2, 0]]))
  bias = 2.0 / (2 + 3)
  np.testing.assert_allclose(pred["item_mean_user_bias"],
                             [[3.5 + bias, 4.0 + bias]])
  np.testing.assert_allclose(pred["global_mean"], [[3.0, 3.0]])


def test_a_task_rated_all_at_the_lowest_counts_as_one():
  """No order is better than another: 1 for every model (documented)."""
  true = np.array([[1.0, 1.0, 1.0], [5.0, 1.0, 3.0]])
  mask = np.ones_like(true, bool)
  worst = np.array([[0.0, 1.0, 2.0], [1.0, 3.0, 2.0]])
  per_task = metrics.ndcg_per_task(worst, true, mask, 3, floor=1.0)
  assert per_task[0] == 1.0 and per_task[1] < 1.0


def test_sorted_runs_put_the_invalid_last_each_a_run_of_its_own():
  """One helper finds the runs of equal scores for nDCG and the ranking
  metrics (two copies of it had grown apart: nDCG sorted a real item
  scored -inf among the padding by its position)."""
  scores = np.array([[0.0, -np.inf, 1.0, 1.0, 0.5]])
  valid = np.array([[False, True, True, True, True]])
  order, starts = metrics.sorted_runs(scores, valid)
  assert order.tolist() == [[2, 3, 4, 1, 0]]
  assert starts.tolist() == [[True, False, True, True, True]]
  # nDCG@4 of it: items 2 and 3 tie for ranks 1-2, item 4 is third, and
  # the real item scored -inf fourth, before the padding.
  true = np.array([[5.0, 4.0, 1.0, 3.0, 2.0]])
  g = 2.0 ** true[0] - 1
  tie = (g[2] + g[3]) / 2
  dcg = tie + tie / np.log2(3) + g[4] / 2 + g[1] / np.log2(5)
  ideal = g[1] + g[3] / np.log2(3) + g[4] / 2 + g[2] / np.log2(5)
  assert metrics.ndcg_per_task(scores, true, valid, 4)[0] == pytest.approx(
      dcg / ideal)
