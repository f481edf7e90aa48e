"""Top-k ranking metrics of implicit feedback (numpy).

A task ranks its candidate items by score, best first. Items whose scores
tie count at their expected value over every order of the tie (McSherry
and Najork, 2008), as the explicit nDCG counts them: no order of a tie is
preferred, so a model that scores a class of items alike (new items on
implicit data) gets the figure of a random order among them, exactly. Any
fixed order favoured something: by item index it was the ids' sort order
(renaming 60 items moved a model's nDCG@10 from 57% below a random
ranking to 122% above it), and a seeded draw per item added its noise to
every tie. The random baseline is the ranking in which every candidate
ties: its expected figures, with no draw. A task's held-out positives are
the relevant items (binary gain). With P positives among C candidates and
`hits@k` of them in the first k:

- HR@k: 1 if hits@k > 0;           Precision@k: hits@k / k;
- Recall@k: hits@k / P;            F1@k: their harmonic mean,
                                   2 hits@k / (k + P) (0 if no hit);
- nDCG@k: sum over hits of 1 / log2(rank + 1), over the ideal
  sum_{r <= min(k, P)} 1 / log2(r + 1);
- MRR: 1 / the rank of the best-ranked positive;
- AUC: the share of (positive, negative) pairs ranked in that order
  (a tied pair counts half).

Each is a mean over tasks; a task without held-out positives has none of
them and is left out, and so is a task without a negative candidate (its
positives are all it could rank: every ranking of it is perfect, and a
user who had interacted with every other item counted as a hit for the
model and both baselines alike).
"""

from __future__ import annotations

import numpy as np

from metarec_jax.data.splits import ragged_arange
from metarec_jax.eval import metrics as metrics_lib

KS = (5, 10, 20)
NAMES = ("hr", "precision", "recall", "f1", "ndcg")


def metric_keys(ks: tuple[int, ...] = KS) -> list[str]:
  """The metric names of a report: `hr@5`, ..., `mrr`, `auc`."""
  return [f"{m}@{k}" for k in ks for m in NAMES] + ["mrr", "auc"]


def _tie_groups(scores: np.ndarray, candidate: np.ndarray,
                positive: np.ndarray):
  """The groups of equal score that hold positives, in every task.

  Args: as `metrics`; a candidate's score is not NaN (`eval` refuses
  those first).

  Returns:
    (row, start, size, positives) per group, int64 [G] each, by task and
    then best first: the task, how many of its candidates score higher,
    how many tie in the group, and how many of those are positives.
  """
  n, i = candidate.shape
  order, new = metrics_lib.sorted_runs(np.broadcast_to(scores, (n, i)),
                                       candidate)
  is_pos = np.take_along_axis(positive & candidate, order, -1)
  at = np.arange(i)
  last = np.ones((n, i), bool)
  last[:, :-1] = new[:, 1:]
  rows, cols = np.nonzero(is_pos)
  first = np.maximum.accumulate(np.where(new, at, 0), axis=-1)[rows, cols]
  end = np.minimum.accumulate(np.where(last, at, i)[:, ::-1],
                              axis=-1)[:, ::-1][rows, cols]
  _, where, count = np.unique(rows * i + first, return_index=True,
                              return_counts=True)
  return (rows[where], first[where], (end - first + 1)[where],
          count.astype(np.int64))


def _discounts(n: int) -> np.ndarray:
  """`D[r]`: the summed discount of ranks 1..r, `D[0] = 0` (length n+1)."""
  return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, n + 2)))])


def _none_in_first(size, positives, slots, most: int) -> np.ndarray:
  """The chance that a uniformly random order of a group of `size` items,
  `positives` of them positive, puts no positive in its first `slots`
  (`slots <= most`): C(size - positives, slots) / C(size, slots)."""
  out = np.ones(len(size))
  for j in range(most):
    take = j < slots
    out = np.where(take, out * np.maximum(size - positives - j, 0)
                   / np.maximum(size - j, 1), out)
  return out


def _expected_reciprocal_best(start, size, positives) -> np.ndarray:
  """E[1 / rank of the best positive] of each task's first group holding
  positives: `start + J`, J the smallest of `positives` positions drawn
  from 1..size without replacement, P(J = 1) = positives / size and
  P(J = j + 1) / P(J = j) = (size - j - positives + 1) / (size - j)."""
  counts = size - positives + 1  # J's possible values
  if not len(counts):
    return np.zeros(0)
  j = ragged_arange(np.zeros_like(counts), counts) + 1
  owner = np.repeat(np.arange(len(counts)), counts)
  t, p = size[owner], positives[owner]
  step = np.where(j > 1, np.log(np.maximum(t - j - p + 2, 1))
                  - np.log(np.maximum(t - j + 1, 1)), 0.0)
  cum = np.cumsum(step)
  first = np.concatenate([[0], np.cumsum(counts)[:-1]])
  log_p = np.log(p / t) + cum - cum[first][owner]
  return np.bincount(owner, weights=np.exp(log_p) / (start[owner] + j),
                     minlength=len(counts))


def metrics(scores: np.ndarray, candidate: np.ndarray, positive: np.ndarray,
            ks: tuple[int, ...] = KS) -> dict[str, np.ndarray]:
  """Every metric of every task, ties at their expected value.

  Args:
    scores: f32 [N, I] (or broadcast to it): each task's score of every
      item (column = item index).
    candidate: bool [N, I]: the items ranked (positives included).
    positive: bool [N, I]: the held-out positives (a subset of candidate).

  Returns:
    {metric: f64 [N]}, NaN for a task without positives or without
    negatives.
  """
  n, i = candidate.shape
  row, start, size, pos = _tie_groups(scores, candidate, positive)
  num_pos = np.bincount(row, weights=pos, minlength=n)
  num_neg = candidate.sum(-1) - num_pos
  has = (num_pos > 0) & (num_neg > 0)
  per_row = lambda values: np.bincount(row, weights=values, minlength=n)
  discount = _discounts(max(i, max(ks)))
  out = {}
  with np.errstate(invalid="ignore", divide="ignore"):
    for k in ks:
      # A group's slots in the first k, each of its items equally likely
      # in any of its positions.
      slots = np.clip(k - start, 0, size)
      hits = per_row(pos * slots / size)
      dcg = per_row(pos * (discount[np.minimum(start + size, k)]
                           - discount[np.minimum(start, k)]) / size)
      # A hit is certain from a group wholly in the first k that holds a
      # positive; a chance from the one group the cut-off splits.
      chance = (slots == size).astype(np.float64)
      split = np.flatnonzero((slots > 0) & (slots < size))
      chance[split] = 1.0 - _none_in_first(size[split], pos[split],
                                           slots[split], k)
      hit = np.zeros(n)
      np.maximum.at(hit, row, chance)
      ideal = discount[np.clip(np.minimum(num_pos, k), 1, k).astype(int)]
      values = {"hr": hit, "precision": hits / k, "recall": hits / num_pos,
                "f1": 2.0 * hits / (k + num_pos), "ndcg": dcg / ideal}
      for name in NAMES:
        out[f"{name}@{k}"] = np.where(has, values[name], np.nan)
    # The best positive lies in its task's first group (of positives).
    rows, best = np.unique(row, return_index=True)
    mrr = np.full(n, np.nan)
    mrr[rows] = _expected_reciprocal_best(start[best], size[best], pos[best])
    out["mrr"] = np.where(has, mrr, np.nan)
    # Negatives above a group's positives: those scoring higher, and half
    # of those tied with them.
    before = np.cumsum(pos) - pos  # positives in earlier groups, all tasks
    above = start - (before - before[np.searchsorted(row, row)]) + (
        size - pos) / 2.0
    auc = 1.0 - per_row(pos * above) / (num_pos * num_neg)
    out["auc"] = np.where(has, auc, np.nan)
  return out


def summarise(values: dict[str, np.ndarray]) -> dict[str, float | None]:
  """Mean of every metric over the tasks that have it (None if none)."""
  out = {}
  for name, v in values.items():
    v = v[~np.isnan(v)]
    out[name] = float(v.mean()) if len(v) else None
  return out


def gap_se(a: np.ndarray, b: np.ndarray,
           weights: np.ndarray | None = None) -> float | None:
  """The standard error of the mean per-task difference `a - b` (one
  metric of two rankings of the same tasks; tasks without it left out),
  weighted by `weights` where given (an MAE over all query ratings weighs
  each task by its count); None on fewer than two tasks."""
  diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64))
  keep = ~np.isnan(diff)
  diff, n = diff[keep], int(keep.sum())
  if n < 2:
    return None
  if weights is None:
    return float(diff.std(ddof=1) / np.sqrt(n))
  w = np.asarray(weights, np.float64)[keep]
  w = w / w.sum()
  spread = (w ** 2 * (diff - (w * diff).sum()) ** 2).sum()
  return float(np.sqrt(spread * n / (n - 1)))
