"""Rating-prediction and ranking metrics over padded query sets (numpy).

All functions take `[N, Q]` arrays: N tasks of up to Q query ratings, with
`mask` marking the real ones.
"""

from __future__ import annotations

import numpy as np


def mae(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float | None:
  """Mean absolute error over all real query ratings (None if there are
  none), summed in float64 like any recomputation from the written
  predictions (float32 sums differed from it in the 8th digit)."""
  n = int(mask.sum())
  return float(np.abs(_f64(pred) - _f64(true))[mask].sum() / n) if n else None


def mae_per_task(pred: np.ndarray, true: np.ndarray,
                 mask: np.ndarray) -> np.ndarray:
  """Each task's mean absolute error over its real query ratings, `[N]`
  from `[N, Q]` arrays (0 for a task without any)."""
  err = np.abs(_f64(pred) - _f64(true)) * mask
  return err.sum(axis=1) / np.maximum(mask.sum(axis=1), 1)


def rmse(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float | None:
  """Root mean squared error over all real query ratings (float64)."""
  n = int(mask.sum())
  return (float(np.sqrt(((_f64(pred) - _f64(true)) ** 2)[mask].sum() / n))
          if n else None)


def _f64(values) -> np.ndarray:
  return np.asarray(values, np.float64)


GAINS = ("exponential", "linear")


def relevance(true: np.ndarray, floor: float = 0.0) -> np.ndarray:
  """The relevance nDCG's gain is taken of: the rating itself on a scale
  whose lowest rating `floor` is at least 0 (1-5 stars, 0/1: the
  protocol's gain exactly), else the rating less `floor`, so that no
  rating has a negative gain (a -10..10 scale: 0..20)."""
  return np.asarray(true, np.float64) - min(float(floor), 0.0)


def sorted_runs(scores: np.ndarray, valid: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
  """`(order, starts)`: each row's positions by descending score, the
  invalid ones last, and `[n, i]` bool, where a run of equal scores begins
  in that order (each invalid position a run of its own): what the ranking
  metrics average a tie over."""
  key = np.where(valid, -np.asarray(scores, np.float64), np.nan)
  order = np.argsort(key, axis=-1, kind="stable")  # NaN sorts last
  ranked = np.take_along_axis(key, order, axis=-1)
  starts = np.ones(ranked.shape, bool)
  starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]  # NaN equals nothing
  return order, starts


def ndcg_per_task(pred: np.ndarray, true: np.ndarray, mask: np.ndarray,
                  k: int, *, gain: str = "exponential",
                  floor: float = 0.0) -> np.ndarray:
  """nDCG@k of each task's query items ranked by predicted rating.

  Items whose predictions tie share their places: each counts at the mean
  gain of its tie, the expected DCG over every order of the tied items
  (McSherry and Najork, ECIR 2008), so that a figure never depends on
  how the items are named (a tie broken by item id ranked every new item
  of the item-mean baseline by its ID). The gain of a rating r is
  2^r - 1 (the protocol's; `gain="linear"`: r itself), r its `relevance`
  on a scale whose lowest rating is `floor`, and the discount of rank i
  (1-based) log2(i + 1); the ideal ranking orders by true rating.
  Padding sorts last with gain 0. Tasks without real query ratings give
  NaN; tasks whose every query gain is 0 (every rating the scale's
  lowest: no order is better than another) give 1.
  """
  if gain not in GAINS:
    raise ValueError(f"gain must be one of {GAINS}, not {gain!r}")
  rel = relevance(true, floor)
  gains = 2.0 ** rel - 1.0 if gain == "exponential" else rel
  gain = np.where(mask, gains, 0.0)
  tasks, width = gain.shape
  # Number every run of equal predictions apart from every other run (of
  # any task: a row's first place starts one), then give each place its
  # run's mean gain.
  order, starts = sorted_runs(pred, mask)
  ranked = np.take_along_axis(gain, order, axis=-1)
  run = np.cumsum(starts.ravel()) - 1
  mean_gain = (np.bincount(run, weights=ranked.ravel())
               / np.bincount(run))[run].reshape(tasks, width)
  ideal = -np.sort(-gain, axis=-1)[:, :k]
  discount = 1.0 / np.log2(np.arange(2, ideal.shape[1] + 2))
  dcg = (mean_gain[:, :k] * discount).sum(-1)
  idcg = (ideal * discount).sum(-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    # (at most 1: a tie's mean of equal gains may round above the gain)
    return np.where(idcg > 0, np.minimum(dcg / idcg, 1.0),
                    np.where(mask.any(-1), 1.0, np.nan))


def ndcg(pred, true, mask, k: int, *, gain: str = "exponential",
         floor: float = 0.0) -> float | None:
  """Mean nDCG@k over the tasks that have query ratings (`ndcg_per_task`)."""
  values = ndcg_per_task(pred, true, mask, k, gain=gain, floor=floor)
  values = values[~np.isnan(values)]
  return float(values.mean()) if len(values) else None


def summary(pred, true, mask, floor: float = 0.0, *,
            rank_by=None) -> dict:
  """MAE, RMSE, nDCG@1 and nDCG@3 (the protocol's gain 2^r - 1) and, beside
  them, nDCG@1 and nDCG@3 with the linear gain r (`ndcg@k_linear`: the
  gain most libraries use; published figures rarely say which) as a
  JSON-ready dict; `floor`: the scale's lowest rating (`relevance`).

  `rank_by`: the scores nDCG ranks by, where they are not `pred` itself:
  `metarec eval` scores predictions clipped to the rating scale and ranks
  them unclipped, as the served top-k does (a clip ties a user's strongest
  likes, which nDCG would then count at their mean gain)."""
  rank_by = pred if rank_by is None else rank_by
  out = {"mae": mae(pred, true, mask), "rmse": rmse(pred, true, mask)}
  for k in (1, 3):
    out[f"ndcg@{k}"] = ndcg(rank_by, true, mask, k, floor=floor)
  for k in (1, 3):
    out[f"ndcg@{k}_linear"] = ndcg(rank_by, true, mask, k, gain="linear",
                                   floor=floor)
  return out
