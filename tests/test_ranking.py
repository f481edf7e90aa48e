"""Top-k ranking metrics against values computed by hand."""

import math

import numpy as np
import pytest

from metarec_jax.eval import ranking

KS = (3, 4, 10)


def tasks():
  """Three tasks over 6 items (column = item index)."""
  scores = np.array([
      # A: item 4 is a support item (not a candidate); positives 2 and 3.
      [0.9, 0.5, 0.5, 0.3, 0.1, 0.8],
      # B: no held-out positive.
      [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
      # C: every score tied; the positive is item 0 (ties: lower index first).
      [0.0] * 6,
  ])
  candidate = np.ones((3, 6), bool)
  candidate[0, 4] = False
  positive = np.zeros((3, 6), bool)
  positive[0, [2, 3]] = True
  positive[2, 0] = True
  return scores, candidate, positive


def test_ranks_break_ties_by_item_index_and_skip_non_candidates():
  ranks = ranking.positive_ranks(*tasks())
  # A: order 0 (0.9), 5 (0.8), 1 (0.5), 2 (0.5, after 1), 3 (0.3).
  assert ranks[0].tolist() == [0, 0, 4, 5, 0, 0]
  assert ranks[1].tolist() == [0] * 6
  assert ranks[2].tolist() == [1, 0, 0, 0, 0, 0]


def test_a_tie_break_orders_equal_scores_higher_first_and_only_those():
  scores, candidate, positive = tasks()
  draw = np.array([0.1, 0.6, 0.9, 0.2, 0.5, 0.3])
  ranks = ranking.positive_ranks(scores, candidate, positive, draw)
  # A: items 1 and 2 tie at 0.5: 2 (drawn 0.9) before 1; the rest by score.
  assert ranks[0].tolist() == [0, 0, 3, 5, 0, 0]
  # C: all tied: the draw's order 2, 1, 4, 5, 3, 0 puts the positive last.
  assert ranks[2].tolist() == [6, 0, 0, 0, 0, 0]
  # Scores alike rank as the draw itself does.
  same = ranking.metrics(np.zeros_like(scores), candidate, positive,
                         tie_break=draw)
  by_draw = ranking.metrics(np.broadcast_to(draw, scores.shape), candidate,
                            positive)
  for key, value in same.items():
    np.testing.assert_array_equal(value, by_draw[key])


def test_metrics_by_hand():
  m = ranking.metrics(*tasks(), ks=KS)
  a, c = 0, 2
  # A at k=3: no hit.
  for name in ranking.NAMES:
    assert m[f"{name}@3"][a] == 0.0
  # A at k=4: one hit at rank 4 of 2 positives.
  assert m["hr@4"][a] == 1.0
  assert m["precision@4"][a] == pytest.approx(1 / 4)
  assert m["recall@4"][a] == pytest.approx(1 / 2)
  assert m["f1@4"][a] == pytest.approx(1 / 3)
  ideal2 = 1 + 1 / math.log2(3)
  assert m["ndcg@4"][a] == pytest.approx((1 / math.log2(5)) / ideal2)
  # A at k=10 (fewer than k positives and candidates): both hit.
  assert m["precision@10"][a] == pytest.approx(2 / 10)
  assert m["recall@10"][a] == pytest.approx(1.0)
  assert m["f1@10"][a] == pytest.approx(1 / 3)
  assert m["ndcg@10"][a] == pytest.approx(
      (1 / math.log2(5) + 1 / math.log2(6)) / ideal2)
  assert m["mrr"][a] == pytest.approx(1 / 4)
  assert m["auc"][a] == 0.0  # the 3 negatives all rank above both
  # B: no held-out positive: every metric is missing, not 0.
  assert all(np.isnan(v[1]) for v in m.values())
  # C: tied scores, the positive has the lowest index: rank 1.
  assert m["hr@3"][c] == 1.0 and m["ndcg@3"][c] == 1.0
  assert m["precision@3"][c] == pytest.approx(1 / 3)
  assert m["mrr"][c] == 1.0 and m["auc"][c] == 1.0


def test_a_task_without_a_negative_candidate_is_left_out():
  """Its positives were all it could rank (a user who had clicked every
  other item), so any ranking scored 1 and the model and both baselines
  alike gained a perfect task."""
  scores = np.array([[0.1, 0.9, 0.5, 0.2], [0.1, 0.9, 0.5, 0.2]])
  candidate = np.array([[True, True, False, False], [True, True, True, False]])
  positive = np.array([[True, True, False, False], [True, False, False, False]])
  m = ranking.metrics(scores, candidate, positive, ks=(1,))
  assert all(np.isnan(v[0]) for v in m.values())
  assert m["hr@1"][1] == 0.0 and m["mrr"][1] == pytest.approx(1 / 3)
  assert ranking.summarise(m)["hr@1"] == 0.0  # the mean of task 1 alone


def test_auc_counts_pairs():
  scores = np.array([[0.4, 0.9, 0.1, 0.5]])
  positive = np.array([[True, False, False, True]])
  m = ranking.metrics(scores, np.ones((1, 4), bool), positive, ks=(1,))
  # Order 1, 3, 0, 2: positive 3 beats negative 2 only, positive 0 too.
  assert m["auc"][0] == pytest.approx(2 / 4)
  assert m["mrr"][0] == pytest.approx(1 / 2)


def test_summary_leaves_out_tasks_without_positives():
  m = ranking.summarise(ranking.metrics(*tasks(), ks=KS))
  assert m["hr@4"] == pytest.approx((1.0 + 1.0) / 2)
  assert m["mrr"] == pytest.approx((1 / 4 + 1) / 2)
  empty = ranking.summarise(ranking.metrics(*[a[1:2] for a in tasks()]))
  assert set(empty) == set(ranking.metric_keys())
  assert all(v is None for v in empty.values())
