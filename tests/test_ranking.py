"""Top-k ranking metrics against values computed by hand, and tied scores
against the mean over every order of the tie."""

import itertools
import math

import numpy as np
import pytest

from metarec_jax.eval import ranking

KS = (3, 4, 10)


def tasks():
  """Three tasks over 6 items (column = item index)."""
  scores = np.array([
      # A: item 4 is a support item (not a candidate); positives 2 and 3.
      [0.9, 0.4, 0.5, 0.3, 0.1, 0.8],
      # B: no held-out positive.
      [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
      # C: every score tied; the positive is item 0.
      [0.0] * 6,
  ])
  candidate = np.ones((3, 6), bool)
  candidate[0, 4] = False
  positive = np.zeros((3, 6), bool)
  positive[0, [2, 3]] = True
  positive[2, 0] = True
  return scores, candidate, positive


def by_ranks(ranks, num_candidates, ks):
  """The metrics of one strict ranking, straight from their definitions
  (`ranks`: the positives' 1-based ranks)."""
  p, c = len(ranks), num_candidates
  out = {}
  for k in ks:
    hits = sum(r <= k for r in ranks)
    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(k, p) + 1))
    out.update({
        f"hr@{k}": float(hits > 0), f"precision@{k}": hits / k,
        f"recall@{k}": hits / p,
        f"f1@{k}": (0.0 if not hits else
                    2 * (hits / k) * (hits / p) / (hits / k + hits / p)),
        f"ndcg@{k}": sum(1 / math.log2(r + 1) for r in ranks if r <= k)
                     / ideal})
  out["mrr"] = 1 / min(ranks)
  below = sum(sum(1 for q in range(r + 1, c + 1) if q not in ranks)
              for r in ranks)
  out["auc"] = below / (p * (c - p))
  return out


def brute_force(scores, candidate, positive, ks):
  """One task's metrics averaged over every order of its tied scores."""
  items = [j for j in range(len(scores)) if candidate[j]]
  levels = sorted({scores[j] for j in items}, reverse=True)
  groups = [[j for j in items if scores[j] == s] for s in levels]
  totals, count = {}, 0
  for orders in itertools.product(*map(itertools.permutations, groups)):
    ranked = [j for group in orders for j in group]
    ranks = [ranked.index(j) + 1 for j in items if positive[j]]
    for key, v in by_ranks(ranks, len(items), ks).items():
      totals[key] = totals.get(key, 0.0) + v
    count += 1
  return {key: v / count for key, v in totals.items()}


def test_metrics_by_hand():
  m = ranking.metrics(*tasks(), ks=KS)
  a = 0
  # A: order 0 (0.9), 5 (0.8), 2 (0.5), 1 (0.4), 3 (0.3): ranks 3 and 5.
  assert m["hr@3"][a] == 1.0
  assert m["precision@3"][a] == pytest.approx(1 / 3)
  assert m["recall@3"][a] == pytest.approx(1 / 2)
  assert m["f1@3"][a] == pytest.approx(2 / 5)
  ideal2 = 1 + 1 / math.log2(3)
  assert m["ndcg@3"][a] == pytest.approx(0.5 / ideal2)
  assert m["ndcg@10"][a] == pytest.approx(
      (0.5 + 1 / math.log2(6)) / ideal2)
  assert m["precision@10"][a] == pytest.approx(2 / 10)
  assert m["recall@10"][a] == pytest.approx(1.0)
  assert m["mrr"][a] == pytest.approx(1 / 3)
  assert m["auc"][a] == pytest.approx(1 / 6)  # 3 negatives x 2 positives
  # B: no held-out positive: every metric is missing, not 0.
  assert all(np.isnan(v[1]) for v in m.values())
  # C: six candidates tied, one positive: a random ranking's figures.
  c = 2
  assert m["hr@3"][c] == pytest.approx(3 / 6)
  assert m["precision@3"][c] == pytest.approx(1 / 6)
  assert m["ndcg@3"][c] == pytest.approx(
      sum(1 / math.log2(r + 1) for r in range(1, 4)) / 6)
  assert m["mrr"][c] == pytest.approx(sum(1 / r for r in range(1, 7)) / 6)
  assert m["auc"][c] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(12))
def test_ties_count_at_their_mean_over_every_order(seed):
  """Random tasks of up to 7 candidates with few score levels (so ties of
  every kind: across the cut-off, holding several positives, holding
  the best positive), against the brute force over every order."""
  rng = np.random.default_rng(seed)
  n, i, ks = 6, 8, (1, 2, 3, 5)
  scores = rng.integers(0, 3, (n, i)).astype(np.float32)
  candidate = rng.random((n, i)) < 0.85
  candidate[:, rng.permutation(i)[:1]] = False  # at most 7
  positive = candidate & (rng.random((n, i)) < 0.4)
  m = ranking.metrics(scores, candidate, positive, ks=ks)
  checked = 0
  for t in range(n):
    num_pos = positive[t].sum()
    if not num_pos or num_pos == candidate[t].sum():
      assert all(np.isnan(v[t]) for v in m.values())
      continue
    expected = brute_force(scores[t], candidate[t], positive[t], ks)
    for key, value in expected.items():
      assert m[key][t] == pytest.approx(value, abs=1e-12), (t, key)
    checked += 1
  assert checked


def test_a_tie_ranks_the_same_whatever_the_items_are_called():
  """Shuffling the items (columns) changes no figure: no order of a tie
  is favoured, the ids' sort order (item index) included."""
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, (20, 50)).astype(np.float64)
  candidate = rng.random((20, 50)) < 0.8
  positive = candidate & (rng.random((20, 50)) < 0.2)
  perm = rng.permutation(50)
  a = ranking.metrics(scores, candidate, positive)
  b = ranking.metrics(scores[:, perm], candidate[:, perm], positive[:, perm])
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=0)


def test_scores_without_ties_rank_as_sorted():
  rng = np.random.default_rng(1)
  scores = rng.random((5, 9))
  candidate = np.ones((5, 9), bool)
  positive = rng.random((5, 9)) < 0.3
  positive[:, 0], positive[:, 1] = True, False
  m = ranking.metrics(scores, candidate, positive, ks=KS)
  for t in range(5):
    order = list(np.argsort(-scores[t]))
    ranks = [order.index(j) + 1 for j in range(9) if positive[t, j]]
    for key, v in by_ranks(ranks, 9, KS).items():
      assert m[key][t] == pytest.approx(v, abs=1e-12), key


def test_a_real_minus_infinity_is_a_candidate_ranked_last():
  scores = np.array([[-np.inf, 0.5, 0.2, 0.9]])
  candidate = np.array([[True, True, True, False]])
  positive = np.array([[True, False, False, False]])
  m = ranking.metrics(scores, candidate, positive, ks=(1, 3))
  assert m["hr@1"][0] == 0.0 and m["hr@3"][0] == 1.0
  assert m["mrr"][0] == pytest.approx(1 / 3) and m["auc"][0] == 0.0


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
  assert m["hr@4"] == pytest.approx((1.0 + 4 / 6) / 2)
  assert m["mrr"] == pytest.approx(
      (1 / 3 + sum(1 / r for r in range(1, 7)) / 6) / 2)
  empty = ranking.summarise(ranking.metrics(*[a[1:2] for a in tasks()]))
  assert set(empty) == set(ranking.metric_keys())
  assert all(v is None for v in empty.values())
