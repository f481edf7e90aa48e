"""Validated shares: how much of what training learned the served model uses.

The anchored model (`models.anchored`) serves `share * model + (1 - share) *
baseline`: the trained model (the anchor plus what training learned: the
network's interaction, the features' item bias, its own user bias) mixed
with the item-mean + user-bias baseline itself, one factor for items with
training ratings, one for items without. Training never moves it (it takes
no gradient and trains at 1). Each validation fits it instead: the
validation users' held-out ratings of existing items (`val`) choose the
first factor, those of new items (`val_new`) the second, each the value of
`GRID` with the lowest MAE if the tasks' errors show, by `EVIDENCE` standard
errors, that it beats 0 (the baseline exactly), else 0. A checkpoint saves
the fitted factors, so `eval`, `export` and the server use them; the
training state keeps 1.

Why a fitted scalar and not only checkpoint selection: where the learned
part mostly fits the training users (a few hundred users, or features that
identify existing items but say nothing of new ones) choosing among
checkpoints is all or nothing and a few dozen validation tasks are too
noisy to make that choice well; one scalar per kind of item, fitted on the
same ratings, falls back towards the baseline as far as the evidence says,
and for new and existing items separately.

Cold shares (`model.cold_share=validated`) are the same for a user without
support ratings (the meta-parameters alone, `models.anchored`), fitted
the same way to the validation users' predictions before adaptation.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from metarec_jax import runtime
from metarec_jax.models.anchored import COLD_SHARE, SHARE

PyTree = Any

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
# A share above 0 needs validation errors this many standard errors (of the
# tasks' paired differences) below those of share 0.
EVIDENCE = 2.0
# Each entry of `share` and the validation scenario that fits it.
SCENARIOS = ("val", "val_new")
TRAINING = (1.0, 1.0)


def present(meta_params: PyTree) -> bool:
  """Whether the model has validated shares."""
  return SHARE in meta_params["model"]


def cold_present(meta_params: PyTree) -> bool:
  """Whether the model has cold shares (`model.cold_share=validated`)."""
  return COLD_SHARE in meta_params["model"]


def with_shares(meta_params: PyTree, values, cold=None) -> PyTree:
  """`meta_params` with `share` set to `values` and, where the model has
  them, the cold shares to `cold` (default: `values`), placed as before
  (built from host data on every process: nothing is compiled)."""
  leaves = {SHARE: values}
  if cold_present(meta_params):
    leaves[COLD_SHARE] = values if cold is None else cold
  return runtime.with_model_leaves(meta_params, leaves)


def evident(errors: np.ndarray, against: np.ndarray) -> bool:
  """Whether per-task errors are lower than `against`'s (the same tasks)
  by more than `EVIDENCE` standard errors of the paired difference."""
  diff = np.asarray(errors, np.float64) - np.asarray(against, np.float64)
  if len(diff) < 2:
    return False
  spread = diff.std(ddof=1) / np.sqrt(len(diff))
  return bool(diff.mean() < -EVIDENCE * spread) or (
      spread == 0 and diff.mean() < 0)


def _choose(maes: list, errors: list, name: str) -> int | None:
  """The index into `GRID` of scenario `name`'s factor (see `fit`): its
  lowest MAE (ties: the larger factor) where evident against 0, else 0;
  None where a value has no finite MAE (no tasks)."""
  if any(v is None or not np.isfinite(v) for v in maes):
    return None
  # The last minimum: the largest factor among equals.
  best = len(GRID) - 1 - int(np.argmin(maes[::-1]))
  if GRID[best] > 0 and not evident(errors[best][name], errors[0][name]):
    best = GRID.index(0.0)
  return best


def per_kind(runs: list, key: str, errors: list) -> list[int]:
  """The index into `GRID` per scenario of `SCENARIOS`, chosen by each
  run's metric `key` and the per-task `errors` (`_choose`): one without
  tasks follows the other, and with neither, 0 (the baseline is
  served)."""
  chosen = {}
  for name in SCENARIOS:
    best = _choose([r[name].get(key) for r in runs], errors, name)
    if best is not None:
      chosen[name] = best
  fallback = chosen.get("val", chosen.get("val_new", GRID.index(0.0)))
  return [chosen.get(name, fallback) for name in SCENARIOS]


def fit(evaluate: Callable[[PyTree], tuple | None], meta_params: PyTree):
  """The shares with the lowest validation MAE, per kind of item, where
  the evidence says they beat the baseline's share 0; and the cold shares
  likewise from the predictions before adaptation.

  Args:
    evaluate: `meta_params -> (results, errors, unadapted errors)`: the
      evaluator's JSON per scenario of `SCENARIOS` and each scenario's
      per-task MAE (`eval.metrics.mae_per_task`) after and before
      adaptation; None when told to stop.
    meta_params: the trained state's parameters (any shares).

  Returns:
    `(shares, cold, results)`: the fitted `(existing, new)` factors, the
    cold ones (None where the model has none) and each scenario's metrics
    at its own factors (`mae_unadapted` at its cold one); None if
    `evaluate` stopped.
    Per kind of item the factor is the grid value with the lowest MAE
    (ties: the larger), kept only if its tasks' errors are lower than
    with 0 by `EVIDENCE` standard errors (`evident`), else 0: the learned
    part must show that it helps on the validation tasks, not only by the
    luck of the lowest of several values. A factor without validation
    tasks (no new items rated by validation users) follows the other;
    with neither (no validation task at all, or no finite MAE) both are
    0: nothing shows that the learned part helps, so the baseline is
    served. Each candidate sets the shares and the cold shares to the
    same value: a user's predictions take one or the other (`warm`), so
    one evaluation scores both.
  """
  runs, errors, unadapted = [], [], []
  for value in GRID:
    out = evaluate(with_shares(meta_params, (value, value)))
    if out is None:
      return None
    runs.append(out[0])
    errors.append(out[1])
    unadapted.append(out[2])
  index = per_kind(runs, "mae", errors)
  results = {name: runs[i][name] for name, i in zip(SCENARIOS, index)}
  cold = None
  if cold_present(meta_params):
    cold_index = per_kind(runs, "mae_unadapted", unadapted)
    cold = tuple(GRID[i] for i in cold_index)
    results = {name: {**m, "mae_unadapted": runs[i][name].get(
        "mae_unadapted")} for (name, m), i in zip(results.items(),
                                                  cold_index)}
  return tuple(GRID[i] for i in index), cold, results
