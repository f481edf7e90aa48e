"""Validated shares: how much of what training learned the served model uses.

The anchored model (`models.anchored`) is the item-mean + user-bias
baseline plus a learned part (the network's interaction and the features'
item bias) times `share`: one factor for items with training ratings, one
for items without. Training never moves it (it takes no gradient and
trains at 1). Each validation fits it instead: the validation users'
held-out ratings of existing items (`val`) choose the first factor, those
of new items (`val_new`) the second, each the value of `GRID` with the
lowest MAE. A checkpoint saves the fitted factors, so `eval`, `export` and
the server use them; the training state keeps 1.

Why a fitted scalar and not only checkpoint selection: where the learned
part mostly fits the training users (a few hundred users, or features that
identify existing items but say nothing of new ones) choosing among
checkpoints is all or nothing and a few dozen validation tasks are too
noisy to make that choice well; one scalar per kind of item, fitted on the
same ratings, falls back towards the baseline as far as the evidence says,
and for new and existing items separately.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from metarec_jax.models.anchored import SHARE

PyTree = Any

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
# Each entry of `share` and the validation scenario that fits it.
SCENARIOS = ("val", "val_new")
TRAINING = (1.0, 1.0)


def present(meta_params: PyTree) -> bool:
  """Whether the model has validated shares."""
  return SHARE in meta_params["model"]


def with_shares(meta_params: PyTree, values) -> PyTree:
  """`meta_params` with `share` set to `values`, placed as before (built
  from host data on every process: nothing is compiled)."""
  old = meta_params["model"][SHARE]
  host = np.asarray(values, np.float32).reshape(old.shape)
  new = jax.make_array_from_callback(old.shape, old.sharding,
                                     lambda index: host[index])
  return {**meta_params, "model": {**meta_params["model"], SHARE: new}}


def fit(evaluate: Callable[[PyTree], dict | None], meta_params: PyTree):
  """The shares with the lowest validation MAE, per kind of item.

  Args:
    evaluate: `meta_params -> {"val": metrics, "val_new": metrics}` (the
      evaluator's JSON per scenario), or None when told to stop.
    meta_params: the trained state's parameters (any shares).

  Returns:
    `(shares, results)`: the fitted `(existing, new)` factors and each
    scenario's metrics at its own factor; None if `evaluate` stopped. A
    factor without validation tasks (no new items rated by validation
    users) follows the other; ties go to the larger factor (the model as
    trained; so is a model without any finite validation MAE).
  """
  maes = {name: [] for name in SCENARIOS}
  runs = []
  for value in GRID:
    results = evaluate(with_shares(meta_params, (value, value)))
    if results is None:
      return None
    runs.append(results)
    for name in SCENARIOS:
      maes[name].append(results[name].get("mae"))
  chosen = {}
  for name in SCENARIOS:
    values = maes[name]
    if any(v is None or not np.isfinite(v) for v in values):
      continue
    # The last minimum: the largest factor among equals.
    chosen[name] = len(GRID) - 1 - int(np.argmin(values[::-1]))
  # Without any finite validation MAE: the model as trained.
  fallback = chosen.get("val", chosen.get("val_new", len(GRID) - 1))
  index = [chosen.get(name, fallback) for name in SCENARIOS]
  shares = tuple(GRID[i] for i in index)
  return shares, {name: runs[i][name] for name, i in zip(SCENARIOS, index)}
