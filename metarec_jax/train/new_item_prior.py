"""The validated prior of new items' support ratings (`model.new_item_prior`).

An anchored model estimates the user biases from the support residuals,
shrunk by a prior (`models.anchored.prior_loss`). A rating of a new item
says less about the user than one of an existing item: its residual also
holds the item's own bias, which no training rating measured and the
features predict only in part (not at all where they are useless). Weighed
as an existing item's, one or two such ratings move the user biases too far
(measured: on MovieLens-1M and the generated test bed, item-cold tasks with
1 or 2 support ratings were predicted worse adapted than not adapted at
all). So each support rating of a new item weighs `1 / multiple`
(`Anchor.support_weights`): a support set of new items alone is shrunk by
`multiple` times the prior.

How much less it says depends on the data, so each validation fits the
multiple on the validation users' ratings of new items (`val_new`, whose
support sets hold new items only): the value of `GRID` whose predictions
have the lowest MAE *as served*, through the median map where the model
has one (`train.validation`; ties: the smaller). As served, because the
choice interacts with the map: on MovieLens-1M the unmapped MAE preferred
1 where the served one preferred 2 to 4. The map is the one fitted on the
predictions as trained (the multiple 1) and then served, so the choice
moves nothing for existing items. Every
value is the same estimator with a stronger or weaker prior, none is a
learned part to be proven against a fallback, so there is no evidence rule
as for the shares (`train.shares`). The checkpoint saves it with the
params; training uses 1 (the rows are weighed as before, and the learned
prior of the model's user bias meets existing items).

Down-weighted or not, a user's first one or two ratings of new items may
mislead: where the features say nothing about new items, the served
prediction of such a user was worse adapted than not adapted at all (the
median map turns the unadapted constant into the most common rating, and
one rating moves a user across its step). So a model with
`model.new_item_min_support=validated` also holds the fewest support
ratings of new items that count at all (`Anchor.support_weights`), fitted
after the multiple and the median map (`fit_min_support`): the validation
users' `val_new` support sets are cut to 1 and 2 ratings, `CUTS` times
each (`eval/support_curve.json` cuts the test users' once), predicted as
served, adapted and unadapted, and the minimum is the smallest value of
`MIN_SUPPORT_GRID` from which every size predicts better adapted on
average over its cuts (`cut_helps`): by its MAE with `MIN_TASKS` tasks or
more, by the evidence a share above 0 needs with fewer (a few validation
users' MAE is noise, and then the first ratings of new items count only
where they help beyond it). Below it a support set of new items keeps the
meta-parameters' user biases, which is the unadapted prediction. Training
uses 1 (every rating counts).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from metarec_jax import runtime
from metarec_jax.eval import metrics as metrics_lib
from metarec_jax.eval.verdicts import MIN_TASKS
from metarec_jax.models.anchored import NEW_ITEM_MIN_SUPPORT, NEW_ITEM_PRIOR
from metarec_jax.train import shares as shares_lib

PyTree = Any

GRID = (1.0, 2.0, 4.0, 8.0, 16.0)
SCENARIO = "val_new"  # validation users' new items: support of new items
TRAINING = 1.0
# The cuts of `val_new` the minimum is judged on, and its candidates: the
# first one or two ratings of new items count where they help (`cut_helps`).
# Not beyond: where few validation users rated new items no cut shows the
# evidence, and a larger minimum would then leave out whole support sets
# that help (measured: the generated `few_sparse` data's 18 item-cold
# tasks, whose 3-7 ratings of new items carry the user's bias, 29% worse
# with a minimum of 8).
MIN_SUPPORT_SIZES = (1, 2)
MIN_SUPPORT_GRID = (1.0, 2.0, 3.0)
# Each size is cut this many times (seeds eval.seed, eval.seed + 1, ...):
# which one or two ratings a user keeps moves one cut's MAE by more than
# the effect (measured: on the ML-100K-sized subset one cut said +1.3%,
# the mean of 8 -0.4%, and the test users' cuts -1.6% on average).
CUTS = 8


def present(meta_params: PyTree) -> bool:
  """Whether the model has a validated prior for new items."""
  return NEW_ITEM_PRIOR in meta_params["model"]


def with_multiple(meta_params: PyTree, value: float) -> PyTree:
  """`meta_params` with `new_item_prior` set to `value`, placed as before
  (host data on every process: nothing is compiled)."""
  return runtime.with_model_leaves(meta_params, {NEW_ITEM_PRIOR: value})


def fit(evaluate: Callable[[PyTree], Any], meta_params: PyTree,
        at_training: tuple[float | None, Any], grid=GRID):
  """The multiple whose validation MAE (as `evaluate` scores it) is lowest.

  Args:
    evaluate: `meta_params -> (MAE, payload)`: the validation MAE of
      `SCENARIO` with these params (None: no tasks) and what the caller
      keeps of that evaluation; None when told to stop.
    meta_params: the params to fit it for (any multiple).
    at_training: `evaluate`'s output at the multiple 1, already at hand.
    grid: the candidates, 1 first (`(1.0,)`: held at 1, as trained).

  Returns:
    `(multiple, evaluate's output at it)`; `(1, at_training)` where the
    MAE at 1 is not finite (no validation user rated a new item); None if
    stopped.
  """
  outs, maes = [at_training], [at_training[0]]
  if maes[0] is None or not np.isfinite(maes[0]):
    return TRAINING, at_training
  for value in grid[1:]:
    out = evaluate(with_multiple(meta_params, value))
    if out is None:
      return None
    outs.append(out)
    maes.append(np.inf if out[0] is None or not np.isfinite(out[0])
                else out[0])
  best = int(np.argmin(maes))  # the first minimum: the smaller multiple
  return grid[best], outs[best]


def min_support_present(meta_params: PyTree) -> bool:
  """Whether the model has a validated minimum of new items' support
  ratings (`model.new_item_min_support=validated`)."""
  return NEW_ITEM_MIN_SUPPORT in meta_params["model"]


def with_min_support(meta_params: PyTree, value: float) -> PyTree:
  """`meta_params` with `new_item_min_support` set to `value` (placed as
  `with_multiple` places it)."""
  return runtime.with_model_leaves(meta_params, {NEW_ITEM_MIN_SUPPORT: value})


def cut_helps(cuts) -> bool:
  """Whether cuts of the same tasks to the same support size are better
  adapted than unadapted, on average over the cuts (`eval.evaluate.
  Predictions` of each): a lower or equal MAE where they have `MIN_TASKS`
  tasks or more (the lower expected error), else per-task errors lower by
  the evidence the shares ask for (`shares.evident`: too few tasks to
  trust the MAE)."""
  adapted = np.mean([metrics_lib.mae_per_task(p.adapted, p.true, p.mask)
                     for p in cuts], axis=0)
  unadapted = np.mean([metrics_lib.mae_per_task(p.unadapted, p.true, p.mask)
                       for p in cuts], axis=0)
  if len(adapted) >= MIN_TASKS:
    return bool(np.mean([metrics_lib.mae(p.adapted, p.true, p.mask)
                         - metrics_lib.mae(p.unadapted, p.true, p.mask)
                         for p in cuts]) <= 0.0)
  return bool(shares_lib.evident(adapted, unadapted))


def fit_min_support(helps: dict[int, bool],
                    grid=MIN_SUPPORT_GRID) -> float:
  """The smallest value of `grid` from which adapting always helps.

  Args:
    helps: support size k -> whether the validation users' new-item
      support sets cut to k ratings were predicted better adapted than not
      adapted (`cut_helps`; sizes without tasks left out).
    grid: the candidates in increasing order, 1 first.

  Returns:
    The smallest `m` of `grid` such that every size `k >= m` helps; the
    largest value of `grid` if none is.
  """
  for least in grid:
    if all(good for k, good in helps.items() if k >= least):
      return least
  return grid[-1]
