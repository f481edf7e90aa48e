"""One validation of the trained state, and what it fits for serving.

The anchored model's shares (`train.shares`), then its prior for new
items' support ratings (`train.new_item_prior`), any rating model's median
map (`train.median_map`), a plain model's cold factors
(`train.cold_factors`, judged through the map), and last the fewest
support ratings that count, of new items and of all (`train.min_support`,
judged as served), are fitted at every validation, in that order, on the
validation users' held-out ratings, to the predictions of the state as
trained;
the checkpoint of that step saves the params with them, so that `eval`,
`export` and the server serve what was validated.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from metarec_jax.eval import metrics as metrics_lib
from metarec_jax.eval.evaluate import Evaluator
from metarec_jax.eval.support_curve import truncate_support
from metarec_jax.models import calibration
from metarec_jax.train import cold_factors, median_map
from metarec_jax.train import min_support as min_support_lib
from metarec_jax.train import new_item_prior as new_prior_lib
from metarec_jax.train import shares as shares_lib

PyTree = Any
log = logging.getLogger("metarec")


def shares_line(scalars: dict, any_new: bool, rated_new: bool) -> str:
  """What a validation says of the shares it fitted (`scalars`); of new
  items only where the data has some (`any_new`: no item of a ratings
  file alone is new, and each validation said none was rated)."""
  line = (f"validated share{'s' if any_new else ''} of the learned part:"
          f" existing items {scalars['val/share_existing_items']:.2f}")
  if any_new:
    line += f", new items {scalars['val/share_new_items']:.2f}" + (
        "" if rated_new else
        " (as existing items': no validation user rated a new item)")
  if "val/cold_share_existing_items" in scalars:
    line += (f"; for users without ratings"
             f" {scalars['val/cold_share_existing_items']:.2f}")
    if any_new:
      line += f", new items {scalars['val/cold_share_new_items']:.2f}"
  return line


def as_trained(params: PyTree) -> PyTree:
  """`params` as training holds them, whatever a validation fitted into
  them: the shares at `shares.TRAINING`, the new-item prior multiple at 1,
  the identity map. What a resumed run trains with, and what a validation
  of a saved checkpoint starts from."""
  if shares_lib.present(params):
    params = shares_lib.with_shares(params, shares_lib.TRAINING)
  if new_prior_lib.present(params):
    params = new_prior_lib.with_multiple(params, new_prior_lib.TRAINING)
  params = min_support_lib.as_trained(params)
  if cold_factors.present(params):
    params = cold_factors.with_factors(params, cold_factors.TRAINING)
  if median_map.present(params):
    params = median_map.identity(params)
  return params


def validate(evaluator: Evaluator, trainer, params: PyTree, step: int, *,
             with_shares: bool, with_map: bool,
             should_stop: Callable[[], bool],
             new_item_priors: tuple[float, ...] = new_prior_lib.GRID,
             min_supports: tuple[float, ...] = min_support_lib.GRID):
  """The validation of the trained `params` after `step`.

  `new_item_priors` are the candidates of the new-item prior multiple
  (`train.new_item_prior`; `(1.0,)` holds it as trained, for tools that
  measure what fitting it does), `min_supports` those of the fewest
  support ratings that count (`train.min_support`; likewise).

  Returns:
    `(results, served params, scalars)`: the evaluator's results per
    validation scenario (at the fitted shares), the params with their
    fitted shares and map (None where the model has neither: the state's
    own), and what was fitted as scalars to report with the metrics; None
    if told to stop.
  """
  with_cold = cold_factors.present(params)
  if not (with_shares or with_map or with_cold):
    results = evaluator.evaluate(trainer.eval_params(params), ("val",),
                                 should_stop=should_stop)
    return None if results is None else (results, None, {})
  # The shares, the new-item prior and the map are fitted to the
  # predictions as trained (each from its training value).
  params = as_trained(params)
  if with_shares:
    fitted = _fit_shares(evaluator, trainer, params, should_stop)
    if fitted is None:
      return None
    params, results, scalars, kept = fitted
    scored = {}  # new-item predictions served instead of kept's (below)
    any_new = bool(evaluator.exp.store.item_new.any())
    log.info("step %d  %s", step, shares_line(scalars, any_new,
                                              _rated_new_items(results)))
    if new_prior_lib.present(params):
      fitted = _fit_new_item_prior(evaluator, trainer, params, results, kept,
                                   with_map, should_stop, new_item_priors)
      if fitted is None:
        return None
      params, results, scored, multiple = fitted
      scalars["val/new_item_prior"] = multiple
      if not _rated_new_items(results):
        if any_new:
          log.info("step %d  no validation user rated a new item: their"
                   " support ratings keep the user biases' prior (x1) and"
                   " count from the first", step)
      else:
        log.info("step %d  validated prior of new items' support ratings:"
                 " %g times the user biases'", step, multiple)
  else:
    kept, scalars, scored = {}, {}, {}
    results = evaluator.evaluate(trainer.eval_params(params),
                                 shares_lib.SCENARIOS,
                                 should_stop=should_stop, keep=kept)
    if results is None:
      return None
  if with_map:  # the median map of what the model (so) serves
    params, mapped = median_map.fit_served(
        params, kept, shares_lib.SCENARIOS, evaluator.lo, evaluator.hi,
        per_kind=calibration.per_kind(params["model"]), scored=scored)
    scalars.update(mapped)
    if mapped:
      log.info("step %d  %s", step, _map_summary(mapped, results))
  if with_cold:  # after the map: the blend is chosen as it is served
    params, results = _fit_cold_factors(evaluator, params, kept, results,
                                        scalars, step)
  for minimum in min_support_lib.present(params):
    fitted = _fit_min_support(evaluator, trainer, params, results,
                              should_stop, minimum, min_supports)
    if fitted is None:
      return None
    params, results, least = fitted
    scalars[f"val/{minimum.leaf}"] = least
    if _has_tasks(results, minimum.scenario):  # new items: else said above
      log.info("step %d  validated fewest %s that count: %g", step,
               minimum.counts, least)
  return results, params, scalars


def compile_jobs(evaluator: Evaluator, trainer, with_shares: bool,
                 with_map: bool) -> list:
  """The programs of a validation, for the warm-up: each validated
  scenario's buckets and, where the fewest support ratings are fitted,
  those of their scenarios cut to `min_support.SIZES` (where every
  validation user rated many new items, that bucket was no scenario's
  own: it compiled inside the first validation, with a warning that a
  shape had escaped the buckets)."""
  params = trainer.abstract_eval_params()
  split = evaluator.exp.split
  names = (shares_lib.SCENARIOS if with_shares or with_map
           or cold_factors.present(params) else ("val",))
  jobs = [job for name in names
          for job in evaluator.compile_jobs(params, split.scenarios[name])]
  minima = min_support_lib.present(trainer.abstract_state().params)
  seed = int(evaluator.exp.config.eval.seed)
  for minimum in minima:
    tasks = split.scenarios.get(minimum.scenario)
    for k in min_support_lib.SIZES if tasks is not None else ():
      cut = truncate_support(tasks, k, seed=seed)
      if len(cut):
        jobs += evaluator.compile_jobs(params, cut)
  return jobs


def _fit_cold_factors(evaluator: Evaluator, params: PyTree, kept: dict,
                      results: dict, scalars: dict, step: int):
  """The validated cold factors of `params` (`train.cold_factors`), from
  the `kept` predictions of the validation's `results`: `(params with
  them, results with each scenario's `mae_unadapted` at them)`; the
  factors go into `scalars` and the log."""
  factors, maes, served = cold_factors.fit(params, kept, evaluator.lo,
                                           evaluator.hi)
  scalars.update({"val/cold_factor_existing_items": factors[0],
                  "val/cold_factor_new_items": factors[1]})
  # What a new visitor is served, beside the blend's own `mae_unadapted`.
  scalars.update({f"{name}/cold_blend_mae": mae[1]
                  for name, mae in served.items()})
  results = {name: ({**m, "mae_unadapted": maes[name][1]} if name in maes
                    else m) for name, m in results.items()}
  kinds = [f"{kind} items {factor:.2f} (MAE before adaptation"
           f" {maes[name][0]:.4f} -> {maes[name][1]:.4f}"
           + ("" if served[name] == maes[name] else
              f", as served through the median map {served[name][0]:.4f}"
              f" -> {served[name][1]:.4f}") + ")"
           for name, kind, factor in zip(shares_lib.SCENARIOS,
                                         ("existing", "new"), factors)
           if name in maes]
  log.info("step %d  validated cold blend (model.cold_blend): a user without"
           " ratings is served the meta-parameters' predictions at this"
           " share of their distance from the training mean: %s", step,
           "; ".join(kinds) or f"{factors[0]:.2f} (no validation task)")
  return cold_factors.with_factors(params, factors), results


def _has_tasks(results: dict, name: str) -> bool:
  """Whether validation scenario `name` had tasks to score (a MAE)."""
  return results.get(name, {}).get("mae") is not None


def _rated_new_items(results: dict) -> bool:
  """Whether the validation users have ratings of new items to fit the
  new-item prior and minimum on."""
  return _has_tasks(results, new_prior_lib.SCENARIO)


def _fit_min_support(evaluator: Evaluator, trainer, params: PyTree,
                     results: dict, should_stop: Callable[[], bool],
                     minimum: min_support_lib.Minimum,
                     grid: tuple[float, ...] = min_support_lib.GRID):
  """The validated `minimum` (`train.min_support`) for the served `params`
  (shares, multiple, map and the minima before it fitted; this one at 1):
  its scenario's support sets cut `CUTS` times to each of `SIZES`,
  predicted as served, adapted against unadapted (`min_support.
  cut_helps`, by the minimum's rule). Returns `(params with it,
  results with the scenario predicted at it where it changed them, the
  minimum)`; None if told to stop."""
  name = minimum.scenario
  tasks = evaluator.exp.split.scenarios.get(name)
  helps = {}
  sizes = min_support_lib.SIZES if len(grid) > 1 else ()
  seed = int(evaluator.exp.config.eval.seed)
  served = trainer.eval_params(params)
  for k in sizes if tasks is not None else ():
    cuts = []
    for j in range(min_support_lib.CUTS):
      cut = truncate_support(tasks, k, seed=seed + j)
      if not len(cut):
        break
      p = evaluator.predictions(served, cut, should_stop)
      if p is None:
        return None
      cuts.append(p)
    if cuts:
      helps[k] = min_support_lib.cut_helps(cuts, minimum.unsure_counts)
  least = min_support_lib.fit(helps, grid)
  params = min_support_lib.with_value(params, minimum, least)
  if (least > min_support_lib.TRAINING and name in results
      and (tasks.support_sizes() < least).any()):
    # The validation's figure of the scenario as it will be adapted (as
    # trained, without the map, like every other validation figure), where
    # the minimum changes it: a support set below it.
    out = evaluator.evaluate(trainer.eval_params(median_map.identity(params)
                                                 if median_map.present(params)
                                                 else params),
                             (name,), should_stop=should_stop)
    if out is None:
      return None
    results = {**results, name: out[name]}
  return params, results, least


def _map_summary(mapped: dict[str, float], results: dict) -> str:
  """One log line on the median map: per kind of item, the validation MAE
  without and with it (cross-fitted) and whether it is served."""
  kinds = []
  for name, kind in zip(shares_lib.SCENARIOS, ("existing", "new")):
    if f"{name}/median_map" not in mapped:
      continue
    kinds.append(
        f"{kind} items {results[name]['mae']:.4f} -> "
        f"{mapped[f'{name}/median_map_mae']:.4f} "
        f"({'served' if mapped[f'{name}/median_map'] else 'not served'})")
  return ("median map (model.calibration), validation MAE without -> with"
          " it, cross-fitted: " + "; ".join(kinds))


def _fit_new_item_prior(evaluator: Evaluator, trainer, params: PyTree,
                        results: dict, kept: dict, with_map: bool,
                        should_stop: Callable[[], bool],
                        grid: tuple[float, ...] = new_prior_lib.GRID):
  """The validated prior multiple of `params` for new items' support
  ratings (`train.new_item_prior`), given the validation's `results` and
  `kept` predictions of `params`, which hold the multiple 1.

  Each multiple is scored by its `val_new` MAE as served: through the
  median map fitted to the predictions at 1 (`median_map.served_mae`),
  the map that is then served, so that the choice moves nothing for
  existing items. Returns `(params with the multiple, results at it, the
  new-item predictions at it to judge the map's verdict on, the
  multiple)`; None if told to stop."""
  name = new_prior_lib.SCENARIO

  def served(out, keep):
    p = keep.get(name)
    if p is None:
      return None
    if with_map:
      return median_map.served_mae(kept, shares_lib.SCENARIOS, name, p,
                                   evaluator.lo, evaluator.hi)
    return out[name]["mae"]

  def evaluate(candidate):
    keep = {}
    out = evaluator.evaluate(trainer.eval_params(candidate), (name,),
                             should_stop=should_stop, keep=keep)
    return None if out is None else (served(out, keep), (out, keep))

  fitted = new_prior_lib.fit(evaluate, params,
                             (served(results, kept), (results, kept)), grid)
  if fitted is None:
    return None
  multiple, (_, (best, keep)) = fitted
  return (new_prior_lib.with_multiple(params, multiple),
          {**results, name: best[name]} if name in best else results,
          {name: keep[name]} if name in keep else {}, multiple)


def _fit_shares(evaluator: Evaluator, trainer, params: PyTree,
                should_stop: Callable[[], bool]):
  """The validated shares of `params` (`train.shares`): `(params with
  them, the validation's results at them, the shares as scalars, the
  predictions per scenario at them)`; None if told to stop."""
  kept_at = []  # per value of GRID, in fit's order: the predictions

  def evaluate(candidate):
    kept = {}
    results = evaluator.evaluate(trainer.eval_params(candidate),
                                 shares_lib.SCENARIOS,
                                 should_stop=should_stop, keep=kept)
    kept_at.append(kept)
    if results is None:
      return None
    return results, *({name: metrics_lib.mae_per_task(getattr(p, which),
                                                       p.true, p.mask)
                       for name, p in kept.items()}
                      for which in ("adapted", "unadapted"))

  fitted = shares_lib.fit(evaluate, params)
  if fitted is None:
    return None
  values, cold, results = fitted
  kept = {name: kept_at[shares_lib.GRID.index(value)].get(name)
          for name, value in zip(shares_lib.SCENARIOS, values)}
  scalars = {"val/share_existing_items": values[0],
             "val/share_new_items": values[1]}
  if cold is not None:
    scalars.update({"val/cold_share_existing_items": cold[0],
                    "val/cold_share_new_items": cold[1]})
  return (shares_lib.with_shares(params, values, cold), results, scalars,
          {name: p for name, p in kept.items() if p is not None})
