"""The validated median map: served ratings calibrated to their median.

Training fits the mean of a rating (squared error); the protocol scores the
absolute error, which the median minimises. Ratings are few discrete values
clipped to a scale, so the two differ: a user-item pair whose mean estimate
is 3.9 is usually rated 4, and 4 has the lower expected absolute error.
With `model.calibration=median` each validation fits (after the shares of
an anchored model, `train.shares`) a monotone map from the served
prediction to the median of the validation ratings at that prediction, and
the model serves `map(prediction)` (`models.calibration`,
`Recommender.predict`). Training and the inner loop never see the map (the
losses take the unmapped prediction).

The map: the median-isotonic (L1) regression of the ratings on the
predictions, on `KNOTS` bins of the rating scale (pool-adjacent-violators
with the merged bins' median), read at the knots and linearly interpolated,
then pulled towards the identity so that its slope is at least
`MIN_SLOPE`: it is strictly increasing, so it never reorders a user's
items (every ranking metric is unchanged). One map is fitted on the rows
of both validation scenarios (existing and new items); each kind of item
is served through it only if, cross-fitted over the validation tasks (each
task mapped by the map fitted on the other tasks), it lowers that kind's
task MAEs by `shares.EVIDENCE` standard errors, or lowers them at all
where the pooled tasks of both kinds show that evidence; else the
identity (a model that does not read item IDs cannot tell the kinds
apart: it serves the map for every item only where both kinds keep it).
What it costs: predictions nearer the medians have a larger squared error
(RMSE), the price of serving the estimate MAE asks for.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metarec_jax import runtime
from metarec_jax.eval import metrics as metrics_lib
from metarec_jax.models.calibration import (IDENTITY_KNOTS, KNOTS,
                                            MEDIAN_KNOTS, MEDIAN_OFFSETS)
from metarec_jax.train import shares as shares_lib

PyTree = Any

MIN_SLOPE = 0.02  # the map's least slope: no two predictions swap or tie
# Cross-fitting folds of the evidence: each task is mapped by the map fitted
# on the others' folds (more folds: fits nearer the one finally served,
# which sees every task; two halves understated its gain on small sets).
FOLDS = 5


def present(meta_params: PyTree) -> bool:
  """Whether the model serves through a median map."""
  return MEDIAN_OFFSETS in meta_params["model"]


def knots(lo: float, hi: float) -> np.ndarray:
  """The map's knots on the rating scale `[lo, hi]`."""
  return np.linspace(float(lo), float(hi), KNOTS)


def _pav_median(groups: list[np.ndarray]) -> np.ndarray:
  """Non-decreasing values, one per group (in order), minimising the sum of
  absolute errors of each group's members: pool-adjacent-violators, each
  pool valued at the median of its members."""
  pools: list[list] = []  # [members, median, groups pooled]
  for group in groups:
    pools.append([group, float(np.median(group)), 1])
    while len(pools) > 1 and pools[-2][1] > pools[-1][1]:
      last, before = pools.pop(), pools.pop()
      members = np.concatenate([before[0], last[0]])
      pools.append([members, float(np.median(members)), before[2] + last[2]])
  return np.concatenate([[median] * count for _, median, count in pools])


def fit_offsets(pred: np.ndarray, rating: np.ndarray,
                at: np.ndarray) -> np.ndarray:
  """The map `p -> p + interp(p, at, offsets)` fitted to `(pred, rating)`
  (1-D, the valid rows), as its offsets at the knots `at` (no rows: the
  identity)."""
  pred = np.asarray(pred, np.float64)
  rating = np.asarray(rating, np.float64)
  if not pred.size:
    return np.zeros(len(at), np.float32)  # the identity
  nearest = np.clip(np.rint((pred - at[0]) / (at[1] - at[0])), 0,
                    len(at) - 1).astype(int)
  used = np.unique(nearest)
  medians = _pav_median([rating[nearest == k] for k in used])
  # A knot without rows takes the value between its neighbours'.
  level = np.interp(at, at[used], medians)
  return ((1.0 - MIN_SLOPE) * (level - at)).astype(np.float32)


def mapped(pred: np.ndarray, at: np.ndarray,
           offsets: np.ndarray) -> np.ndarray:
  """The numpy twin of `calibration.serve`'s map (clamped at the ends)."""
  return pred + np.interp(pred, at, offsets)


def _task_mae(pred, rating, mask) -> np.ndarray:
  """Each task's MAE, in float64 (`metrics.mae_per_task`)."""
  return metrics_lib.mae_per_task(np.asarray(pred, np.float64), rating, mask)


def fit(parts: dict[str, tuple], at: np.ndarray,
        scored: dict[str, np.ndarray] | None = None
        ) -> tuple[np.ndarray, dict[str, tuple[bool, float]]]:
  """One map fitted on the rows of every scenario in `parts`, and for each
  scenario whether the evidence keeps it there.

  Args:
    parts: scenario -> `(pred, rating, mask)`, `[tasks, query]`
      validation predictions (clipped to the scale, as scored), true
      ratings and the valid rows.
    at: the knots (`knots`).
    scored: scenario -> other predictions of the same rows (clipped) to
      judge that scenario's verdict and MAE on, through the same maps
      (default: its predictions in `parts`). The map and the pooled
      evidence stay those of `parts`: a scenario's predictions can be
      chosen (`train.new_item_prior`) without moving the other kind's map.

  Returns:
    `(offsets, {scenario: (kept, cross-fitted MAE)})`. The evidence: the
    tasks are cut in `FOLDS` folds (every FOLDS-th task of each scenario),
    each fold mapped by the map fitted on the other folds' rows (all
    scenarios pooled); a scenario keeps the map if its tasks' MAEs so
    mapped are lower than unmapped by `shares.EVIDENCE` standard errors
    (`shares.evident`), or if the pooled tasks of every scenario show that
    and its own tasks' mean MAE is lower mapped (a kind with few tasks
    cannot show the evidence alone, but can show harm). One map for both
    kinds of item: it is a property of the rating scale more than of the
    items, and the pooled rows fit it better than a few new-item tasks
    alone, whose own map need not carry over to other users' tasks.
  """
  scored = {name: scored[name][m.any(1)]
            for name, (_, _, m) in parts.items() if name in (scored or {})}
  parts = {name: tuple(a[m.any(1)] for a in (p, r, m))
           for name, (p, r, m) in parts.items()}
  fold = {name: np.arange(len(p)) % FOLDS
          for name, (p, _, _) in parts.items()}

  def rows(which):
    pred, rating = zip(*[(p[f][m[f]], r[f][m[f]])
                         for name, (p, r, m) in parts.items()
                         for f in [which(fold[name])]])
    return np.concatenate(pred), np.concatenate(rating)

  fold_offsets = [fit_offsets(*rows(lambda f, s=side: f != s), at)
                  for side in range(FOLDS)]

  def cross_fitted(preds):
    """Each task's predictions mapped by the map of the other folds."""
    out = {name: np.array(p, np.float64) for name, p in preds.items()}
    for side, offsets in enumerate(fold_offsets):
      for name, p in preds.items():
        here = fold[name] == side
        out[name][here] = mapped(p[here], at, offsets)
    return out

  def task_errors(preds):
    """Per scenario: its tasks' MAEs mapped (cross-fitted) and unmapped."""
    crossed = cross_fitted(preds)
    return {name: (_task_mae(np.clip(crossed[name], at[0], at[-1]), r, m),
                   _task_mae(preds[name], r, m))
            for name, (_, r, m) in parts.items()}

  fitted = task_errors({name: p for name, (p, _, _) in parts.items()})
  pooled = shares_lib.evident(*(np.concatenate(side) for side in
                                zip(*fitted.values())))
  verdicts = {}
  judged = fitted if not scored else task_errors(
      {name: scored.get(name, p) for name, (p, _, _) in parts.items()})
  for name, (mapped_errors, unmapped_errors) in judged.items():
    m = parts[name][2]
    if len(m) < 2:
      continue
    # The map is fitted on the pooled rows, so the pooled tasks are its
    # evidence; a kind too small to show it on its own keeps it where its
    # own tasks do not point the other way.
    kept = shares_lib.evident(mapped_errors, unmapped_errors) or (
        pooled and mapped_errors.mean() < unmapped_errors.mean())
    mae = float((mapped_errors * m.sum(1)).sum() / m.sum())
    verdicts[name] = (bool(kept), mae)
  return fit_offsets(*rows(lambda f: f >= 0), at), verdicts


def with_map(meta_params: PyTree, at: np.ndarray,
             offsets: list[np.ndarray | None]) -> PyTree:
  """`meta_params` serving through the map (`None`: identity for that kind
  of item), placed as before (host data on every process)."""
  table = np.stack([np.zeros(len(at), np.float32) if o is None else o
                    for o in offsets]).astype(np.float32)
  return runtime.with_model_leaves(
      meta_params, {MEDIAN_KNOTS: np.asarray(at, np.float32),
                    MEDIAN_OFFSETS: table})


def identity(meta_params: PyTree) -> PyTree:
  """`meta_params` with the identity map (what training runs with)."""
  return with_map(meta_params, IDENTITY_KNOTS, [None, None])


def _parts(predictions: dict, scenarios) -> dict[str, tuple]:
  """`fit`'s parts of the scenarios with validation ratings."""
  return {name: (p.adapted, p.true, p.mask) for name in scenarios
          for p in [predictions.get(name)] if p is not None and p.mask.any()}


def served_mae(predictions: dict, scenarios, name: str, candidate,
               lo: float, hi: float) -> float:
  """The MAE of `candidate` (`Predictions` of scenario `name`'s tasks, e.g.
  with another new-item prior) as served through the map that
  `predictions` fit (`fit_served`): its cross-fitted MAE where the
  evidence keeps the map for it, else its own MAE."""
  own = metrics_lib.mae(candidate.adapted, candidate.true, candidate.mask)
  parts = _parts(predictions, scenarios)
  if not hi > lo or name not in parts:
    return own
  _, verdicts = fit(parts, knots(lo, hi), scored={name: candidate.adapted})
  kept, mae = verdicts.get(name, (False, own))
  return mae if kept else own


def fit_served(meta_params: PyTree, predictions: dict, scenarios, lo: float,
               hi: float, *, per_kind: bool = True,
               scored: dict | None = None
               ) -> tuple[PyTree, dict[str, float]]:
  """`meta_params` serving through the map (`fit`) for each kind of item
  whose validation shows the evidence for it.

  Args:
    meta_params: the validated parameters (their shares fitted).
    predictions: scenario -> `eval.evaluate.Predictions` of those params
      (or None).
    scenarios: the scenario of each kind of item (`shares.SCENARIOS`).
    lo, hi: the rating scale.
    per_kind: whether the model serves each kind of item its own row of
      the map (`Recommender.existing_items`); if not, the map is served for
      every item only if every scenario with tasks keeps it.
    scored: scenario -> `Predictions` of the same tasks that the params
      serve instead of `predictions` (`fit`'s `scored`: the map is fitted
      on `predictions`, the verdict judged on these).

  Returns:
    The params and, per scenario with tasks, `<scenario>/median_map_mae`
    (its tasks' cross-fitted MAE, `fit`) and `<scenario>/median_map` (1:
    served through the map, 0: the identity) to report beside the
    validation's metrics.
  """
  if not hi > lo:  # one rating value: nothing to map
    return identity(meta_params), {}
  at = knots(lo, hi)
  parts = _parts(predictions, scenarios)
  verdicts, offsets = {}, None
  if parts:
    offsets, verdicts = fit(parts, at, scored={
        name: p.adapted for name, p in (scored or {}).items()
        if name in parts})
  if not per_kind and not all(kept for kept, _ in verdicts.values()):
    verdicts = {name: (False, mae) for name, (_, mae) in verdicts.items()}
  scalars = {}
  for name, (kept, mae) in verdicts.items():
    scalars[f"{name}/median_map_mae"] = mae
    scalars[f"{name}/median_map"] = float(kept)
  return with_map(meta_params, at, [
      offsets if verdicts.get(name, (False,))[0] else None
      for name in scenarios]), scalars
