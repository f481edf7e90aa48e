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
still mislead: `model.new_item_min_support` (`train.min_support`) leaves
them out below a validated minimum.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from metarec_jax import runtime
from metarec_jax.models.anchored import NEW_ITEM_PRIOR

PyTree = Any

GRID = (1.0, 2.0, 4.0, 8.0, 16.0)
SCENARIO = "val_new"  # validation users' new items: support of new items
TRAINING = 1.0


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
