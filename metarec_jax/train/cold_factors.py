"""Validated cold factors: what a model without an anchor serves a user
without ratings (`models.cold_blend`, `model.cold_blend=validated`).

Such a model serves the meta-parameters' prediction `u` of a user without
ratings as `level + factor * (u - level)`, `level` the training mean
rating, one factor for items with training ratings and one for the others.
Training never moves the factors (they take no gradient and train at 1).
Each validation fits them, as `train.shares` fits the anchored models'
cold shares: from the validation users' predictions before adaptation
(the evaluator keeps them, at the factors 1), each value of `shares.GRID`
applied on the host (the blend is a function of the prediction alone: no
second evaluation), the existing items' factor on `val`, the new items'
on `val_new` (pooled where the model does not tell the kinds apart: it
serves one factor for every item). Per kind the value with the lowest MAE
as served is kept where its tasks' errors are lower than at 0 (the
training mean itself, through the map where there is one) by
`shares.EVIDENCE` standard errors, else 0: the meta-parameters must show
that they predict a new visitor better than the mean does.

"As served" is through the median map where the model has one
(`model.calibration=median`): the map comes after the blend, and what it
makes of the blended predictions, not the blend alone, is what a new
visitor gets. The validation fits the map first (from the adapted
predictions, which the factors do not touch; the factors are judged
through the map fitted on the same validation tasks, not cross-fitted as
the map's own verdict is: both sides of the evidence share that map). The
validation reports the blend's own MAE before adaptation (`mae_unadapted`,
unmapped like every validation MAE) and the served one as
`<scenario>/cold_blend_mae`. On MovieLens-1M the two
choose differently: the blend alone is best at 0 (the mean), while the map
serves the blend at 0.25 better than the mean's own map (validation MAE
0.779 against 0.813 for existing items, seed 0, 2026-12-07).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metarec_jax import runtime
from metarec_jax.eval import metrics as metrics_lib
from metarec_jax.models.calibration import MEDIAN_KNOTS, MEDIAN_OFFSETS
from metarec_jax.models.calibration import per_kind as tells_kinds
from metarec_jax.models.cold_blend import COLD_FACTOR, COLD_LEVEL
from metarec_jax.train import median_map
from metarec_jax.train import shares as shares_lib

PyTree = Any

TRAINING = (1.0, 1.0)


def present(meta_params: PyTree) -> bool:
  """Whether the model serves a cold blend."""
  return COLD_FACTOR in meta_params["model"]


def with_factors(meta_params: PyTree, values) -> PyTree:
  """`meta_params` with the cold factors set to `values` (existing, new),
  placed as before."""
  return runtime.with_model_leaves(meta_params, {COLD_FACTOR: values})


def blended(unadapted: np.ndarray, level: float, factor: float, lo: float,
            hi: float, served_map: tuple | None = None) -> np.ndarray:
  """The predictions of the unclipped `unadapted` ones at `factor`
  (`cold_blend.serve`), through `served_map` (`(knots, offsets)` of one
  kind of item, `median_map`) where given, then clipped to `[lo, hi]` as
  scored."""
  u = np.asarray(unadapted, np.float64)
  out = u - (1.0 - factor) * (u - level)
  if served_map is not None:
    out = median_map.mapped(out, *served_map)
  return np.clip(out, lo, hi)


def _served_maps(model: PyTree) -> tuple | None:
  """Per kind of item (existing, new) the `(knots, offsets)` the model
  serves through (row 0 for both where it tells no kinds apart, as
  `calibration.serve` does); None: no median map."""
  if MEDIAN_OFFSETS not in model:
    return None
  at = np.asarray(runtime.to_host(model[MEDIAN_KNOTS]), np.float64)
  offsets = np.asarray(runtime.to_host(model[MEDIAN_OFFSETS]), np.float64)
  rows = (0, 1) if tells_kinds(model) else (0, 0)
  return tuple((at, offsets[r]) for r in rows)


def fit(meta_params: PyTree, kept: dict, lo: float, hi: float):
  """The validated cold factors of `meta_params` (see the module
  docstring).

  Args:
    meta_params: the parameters the predictions were made with (their
      level, kind table and median map are read: fit the map first).
    kept: per scenario of `shares.SCENARIOS`, the evaluator's
      `Predictions` (absent: no tasks).
    lo, hi: the rating scale.

  Returns:
    `(factors, maes, served)`: the `(existing, new)` factors; per scenario
    with query ratings its `mae_unadapted` at 1 (as trained) and at its
    factor, without the median map (as the validation reports MAEs before
    adaptation); and the same two as served, through the map (the same
    values where the model has none).
  """
  model = meta_params["model"]
  level = float(runtime.to_host(model[COLD_LEVEL]))
  maps = _served_maps(model) or (None, None)
  map_of = dict(zip(shares_lib.SCENARIOS, maps))
  groups = {name: [kept[name]] for name in shares_lib.SCENARIOS
            if kept.get(name) is not None}
  if not tells_kinds(model) and groups:  # one factor serves every item
    groups = {shares_lib.SCENARIOS[0]: [p for ps in groups.values()
                                        for p in ps]}
  runs, errors = [], []
  for value in shares_lib.GRID:
    run = {name: {"mae_unadapted": None} for name in shares_lib.SCENARIOS}
    err = {}
    for name, predictions in groups.items():
      pred, true, mask = (np.concatenate(parts) for parts in zip(*[
          (blended(p.unadapted_unclipped, level, value, lo, hi,
                   map_of[name]), p.true, p.mask) for p in predictions]))
      run[name]["mae_unadapted"] = metrics_lib.mae(pred, true, mask)
      err[name] = metrics_lib.mae_per_task(pred, true, mask)
    runs.append(run)
    errors.append(err)
  index = shares_lib.per_kind(runs, "mae_unadapted", errors)
  if not tells_kinds(model):
    index = [index[0]] * len(index)
  factors = tuple(shares_lib.GRID[i] for i in index)
  maes, served = {}, {}
  for name, factor in zip(shares_lib.SCENARIOS, factors):
    p = kept.get(name)
    if p is not None and p.mask.any():
      for out, with_map in ((maes, None), (served, map_of[name])):
        out[name] = tuple(metrics_lib.mae(
            blended(p.unadapted_unclipped, level, f, lo, hi, with_map),
            p.true, p.mask) for f in (1.0, factor))
  return factors, maes, served
