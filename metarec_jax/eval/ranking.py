"""Top-k ranking metrics of implicit feedback (numpy).

A task ranks its candidate items by score, best first; ties are broken by
a given seeded draw per item (higher first), else by item index. Index
order is the item ids' sort order: a model that scored a class of items
alike (new items on implicit data) ranked the ids that sort first on top,
and renaming 60 items moved its nDCG@10 from 57% below a random ranking
to 122% above it. Its held-out positives are the
relevant items (binary gain). With P positives among C candidates and
`hits@k` of them in the first k:

- HR@k: 1 if hits@k > 0;           Precision@k: hits@k / k;
- Recall@k: hits@k / P;            F1@k: their harmonic mean (0 if both 0);
- nDCG@k: sum over hits of 1 / log2(rank + 1), over the ideal
  sum_{r <= min(k, P)} 1 / log2(r + 1);
- MRR: 1 / the rank of the best-ranked positive;
- AUC: the share of (positive, negative) pairs ranked in that order.

Each is a mean over tasks; a task without held-out positives has none of
them and is left out, and so is a task without a negative candidate (its
positives are all it could rank: every ranking of it is perfect, and a
user who had interacted with every other item counted as a hit for the
model and both baselines alike).
"""

from __future__ import annotations

import numpy as np

KS = (5, 10, 20)
NAMES = ("hr", "precision", "recall", "f1", "ndcg")


def metric_keys(ks: tuple[int, ...] = KS) -> list[str]:
  """The metric names of a report: `hr@5`, ..., `mrr`, `auc`."""
  return [f"{m}@{k}" for k in ks for m in NAMES] + ["mrr", "auc"]


def positive_ranks(scores: np.ndarray, candidate: np.ndarray,
                   positive: np.ndarray, tie_break: np.ndarray | None = None
                   ) -> np.ndarray:
  """The 1-based rank of every positive among its task's candidates.

  Args:
    scores: f32 [N, I] (or broadcast to it): each task's score of every
      item (column = item index).
    candidate: bool [N, I]: the items ranked (positives included).
    positive: bool [N, I]: the held-out positives (a subset of candidate).
    tie_break: [N, I] (or broadcast to it): orders equal scores, higher
      first; None: the item index, lower first.

  Returns:
    int64 [N, I]: the rank of each positive, 0 elsewhere.
  """
  n, i = candidate.shape
  # Non-candidates sort last; lexsort's last key is primary.
  key = np.where(candidate, -np.asarray(scores, np.float64), np.inf)
  second = (np.arange(i) if tie_break is None
            else -np.asarray(tie_break, np.float64))
  order = np.lexsort((np.broadcast_to(second, (n, i)), key), axis=-1)
  rank = np.empty((n, i), np.int64)
  np.put_along_axis(rank, order, np.arange(1, i + 1)[None, :], axis=-1)
  return np.where(positive & candidate, rank, 0)


def per_task(ranks: np.ndarray, num_candidates: np.ndarray,
             ks: tuple[int, ...] = KS) -> dict[str, np.ndarray]:
  """Every metric of every task from its positives' ranks.

  Args:
    ranks: int [N, M]: the positives' 1-based ranks, 0 = no positive
      (any layout: only the non-zero entries count).
    num_candidates: int [N]: candidates ranked per task (positives too).

  Returns:
    {metric: f64 [N]}, NaN for a task without positives or without
    negatives.
  """
  ranks = np.asarray(ranks, np.int64)
  is_pos = ranks > 0
  num_pos = is_pos.sum(-1)
  num_neg = np.asarray(num_candidates, np.int64) - num_pos
  has = (num_pos > 0) & (num_neg > 0)
  out = {}
  with np.errstate(invalid="ignore", divide="ignore"):
    for k in ks:
      hits = (is_pos & (ranks <= k)).sum(-1)
      precision = hits / k
      recall = hits / num_pos
      ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))[
          np.clip(np.minimum(num_pos, k) - 1, 0, k - 1)]
      dcg = np.where(is_pos & (ranks <= k),
                     1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0).sum(-1)
      both = precision + recall
      values = {"hr": (hits > 0).astype(np.float64), "precision": precision,
                "recall": recall,
                "f1": np.where(both > 0, 2 * precision * recall / both, 0.0),
                "ndcg": dcg / ideal}
      for name in NAMES:
        out[f"{name}@{k}"] = np.where(has, values[name], np.nan)
    best = np.where(is_pos, ranks, np.iinfo(np.int64).max).min(-1)
    out["mrr"] = np.where(has, 1.0 / best, np.nan)
    # Negatives above a positive: its rank - 1 minus the positives above it.
    sorted_ranks = np.sort(np.where(is_pos, ranks, np.iinfo(np.int64).max),
                           axis=-1)
    above = np.arange(ranks.shape[-1])[None, :]
    neg_above = np.where(sorted_ranks < np.iinfo(np.int64).max,
                         sorted_ranks - 1 - above, 0)
    auc = 1.0 - neg_above.sum(-1) / (num_pos * num_neg)
    out["auc"] = np.where(has, auc, np.nan)
  return out


def summarise(values: dict[str, np.ndarray]) -> dict[str, float | None]:
  """Mean of every metric over the tasks that have it (None if none)."""
  out = {}
  for name, v in values.items():
    v = v[~np.isnan(v)]
    out[name] = float(v.mean()) if len(v) else None
  return out


def gap_se(a: np.ndarray, b: np.ndarray) -> float | None:
  """The standard error of the mean per-task difference `a - b` (one
  metric of two rankings of the same tasks; tasks without it left out);
  None on fewer than two tasks."""
  diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64))
  diff = diff[~np.isnan(diff)]
  if len(diff) < 2:
    return None
  return float(diff.std(ddof=1) / np.sqrt(len(diff)))


def metrics(scores: np.ndarray, candidate: np.ndarray, positive: np.ndarray,
            ks: tuple[int, ...] = KS, tie_break: np.ndarray | None = None
            ) -> dict[str, np.ndarray]:
  """`per_task` metrics of tasks given as full score rows (see
  `positive_ranks`)."""
  ranks = positive_ranks(scores, candidate, positive, tie_break)
  return per_task(ranks, candidate.sum(-1), ks)
