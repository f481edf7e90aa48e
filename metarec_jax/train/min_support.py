"""The validated fewest support ratings that count (`model.*_min_support`).

A user's first one or two support ratings may mislead an anchored model
rather than inform it: adapted to them, the served prediction was worse
than the meta-parameters' own (measured: item-cold tasks with 1 or 2
ratings of new items on MovieLens-1M and the generated test bed, and
MovieLens-1M's ratings alone at 1 and 2 ratings of any item, W MAE 0.789
and 0.777 adapted against 0.769 unadapted, where even the baseline's
shrunk user bias loses to the item means: 0.802). So the model may hold a
minimum below which a support set counts as empty
(`Anchor.support_weights`): its user keeps the meta-parameters, which is
the unadapted prediction (and, with `model.cold_share=validated`, the cold
shares of a user without ratings). Training uses 1 (every rating counts).
A plain model with a cold blend holds them too (`models.cold_blend`):
below `warm_min_support`, a user is served the blend.

Two minima, each fitted on its own validation scenario (`MINIMA`):

- `new_item_min_support`: the fewest support ratings of *new* items that
  count (`val_new`, whose support sets hold new items only); below it
  those rows weigh 0 and the user's other ratings count as usual;
- `warm_min_support`: the fewest support ratings that count at all
  (`val`, existing items); below it the user is served as one without
  ratings. Fitted after the first, so it counts the rows the first keeps.

Each is fitted at every validation after the shares, the new-item prior
and the median map (`train.validation`): the scenario's support sets are
cut to `SIZES` ratings, `CUTS` times each (`eval/support_curve.json` cuts
the test users' once), predicted as served, adapted and unadapted, and
the minimum is the smallest value of `GRID` from which every size predicts
better adapted on average over its cuts (`cut_helps`): by its MAE with
`MIN_TASKS` tasks or more; with fewer (a few validation users' MAE is
noise), new items' first ratings count only where they help by the
evidence a share above 0 needs, a user's first ratings unless they hurt
by it (`MINIMA`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from metarec_jax import runtime
from metarec_jax.eval import metrics as metrics_lib
from metarec_jax.eval.verdicts import MIN_TASKS
from metarec_jax.models.cold_blend import (NEW_ITEM_MIN_SUPPORT,
                                           WARM_MIN_SUPPORT)
from metarec_jax.train import shares as shares_lib

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Minimum:
  """One validated minimum: the model's parameter, the validation scenario
  whose support sets are cut to fit it, what it counts (for logs), and
  what a size with fewer than `MIN_TASKS` tasks needs to count
  (`cut_helps`): evidence that adapting helps, or (`unsure_counts`) no
  evidence that it hurts."""
  leaf: str
  scenario: str
  counts: str
  unsure_counts: bool = False


# Both judge a size by its MAE where they have `MIN_TASKS` tasks or more.
# With fewer, a new item's first ratings count only where they evidently
# help (the harm they did was measured), a user's first ratings unless
# they evidently hurt: every rating counted before the key, the baseline
# itself adapts from the first, and on the tiny config's 24 validation
# tasks the first two helped by 3-5% without the evidence (the test
# users' by 8-12%).
# A margin of one standard error for the warm minimum was measured and not
# kept: on MovieLens-1M's ratings alone it kept 2-rating users unadapted
# (whose test cuts were 0.007 to 0.010 worse adapted, seeds 0 and 1), but
# it also left the generated `few_sparse` data's 1-rating users and the
# ML-100K-sized ratings' 2-rating users unadapted, where adapting was 0.020
# and 0.022 better (docs/results.md).
MINIMA = (Minimum(NEW_ITEM_MIN_SUPPORT, "val_new",
                  "support ratings of new items"),
          Minimum(WARM_MIN_SUPPORT, "val", "support ratings",
                  unsure_counts=True))
TRAINING = 1.0
# The cuts a minimum is judged on, and its candidates: the first one or two
# ratings count where they help (`cut_helps`). Not beyond: where few
# validation users rated new items no cut shows the evidence, and a larger
# minimum would then leave out whole support sets that help (measured: the
# generated `few_sparse` data's 18 item-cold tasks, whose 3-7 ratings of
# new items carry the user's bias, 29% worse with a minimum of 8).
SIZES = (1, 2)
GRID = (1.0, 2.0, 3.0)
# Each size is cut this many times (seeds eval.seed, eval.seed + 1, ...):
# which one or two ratings a user keeps moves one cut's MAE by more than
# the effect (measured: on the ML-100K-sized subset one cut said +1.3%,
# the mean of 8 -0.4%, and the test users' cuts -1.6% on average).
CUTS = 8


def present(meta_params: PyTree) -> tuple[Minimum, ...]:
  """The minima the model holds, in the order they are fitted."""
  return tuple(m for m in MINIMA if m.leaf in meta_params["model"])


def with_value(meta_params: PyTree, minimum: Minimum, value: float) -> PyTree:
  """`meta_params` with `minimum`'s parameter set to `value` (host data on
  every process: nothing is compiled)."""
  return runtime.with_model_leaves(meta_params, {minimum.leaf: value})


def as_trained(meta_params: PyTree) -> PyTree:
  """`meta_params` with every minimum at `TRAINING` (every rating counts)."""
  for minimum in present(meta_params):
    meta_params = with_value(meta_params, minimum, TRAINING)
  return meta_params


def cut_helps(cuts, unsure_counts: bool = False) -> bool:
  """Whether cuts of the same tasks to the same support size are better
  adapted than unadapted, on average over the cuts (`eval.evaluate.
  Predictions` of each): a lower or equal MAE where they have `MIN_TASKS`
  tasks or more (the lower expected error), else per-task errors lower by
  the evidence the shares ask for (`shares.evident`: too few tasks to
  trust the MAE) or, `unsure_counts`, not higher by that evidence."""
  adapted = np.mean([metrics_lib.mae_per_task(p.adapted, p.true, p.mask)
                     for p in cuts], axis=0)
  unadapted = np.mean([metrics_lib.mae_per_task(p.unadapted, p.true, p.mask)
                       for p in cuts], axis=0)
  if len(adapted) >= MIN_TASKS:
    return bool(np.mean([metrics_lib.mae(p.adapted, p.true, p.mask)
                         - metrics_lib.mae(p.unadapted, p.true, p.mask)
                         for p in cuts]) <= 0.0)
  if unsure_counts:
    return not shares_lib.evident(unadapted, adapted)
  return bool(shares_lib.evident(adapted, unadapted))


def fit(helps: dict[int, bool], grid=GRID) -> float:
  """The smallest value of `grid` from which adapting always helps.

  Args:
    helps: support size k -> whether the validation scenario's support
      sets cut to k ratings were predicted better adapted than not adapted
      (`cut_helps`; sizes without tasks left out).
    grid: the candidates in increasing order, 1 first.

  Returns:
    The smallest `m` of `grid` such that every size `k >= m` helps; the
    largest value of `grid` if none is.
  """
  for least in grid:
    if all(good for k, good in helps.items() if k >= least):
      return least
  return grid[-1]
