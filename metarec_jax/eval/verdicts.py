"""Honest warnings about an evaluation: the model lost, or too few tasks.

A meta-learner is worth running only where it beats the model-free baseline
computed on the very same tasks: the item-mean + user-bias baseline on
ratings, the most-popular ranking on implicit feedback (full-catalog
nDCG@10). `metarec train` (on the validation users) and `metarec eval` (on
every scenario) say so when it does not, and when a scenario has too few
tasks for its figures to mean anything."""

from __future__ import annotations

from typing import Callable

import numpy as np

from metarec_jax.models.factory import is_anchored
from metarec_jax.models.recommender import RANKING_LOSSES
from metarec_jax.workdir.criterion import RANKING_CRITERION

BASELINE = "item_mean_user_bias"
# Below this many tasks a scenario's MAE moves by several percent between
# seeds (ML-100K's IC has 6 tasks, UIC 1): too few to compare models.
MIN_TASKS = 50
# A model within this relative margin of the baseline ties with it: where
# the ratings hold nothing but biases the best model is the baseline, and
# its checkpoint or share may differ from it by 0.01% either way.
TIE = 0.001
# A ranking within this relative margin of popularity's ties with it: the
# nDCG@10 of a few hundred tasks moves by several percent between seeds
# (MovieLens-1M implicit, docs/results.md), and a model that kept its
# popularity start differs from popularity by its support's adaptation.
RANKING_TIE = 0.01
# A ranking's loss to popularity is warned about beyond this many standard
# errors of the per-task gap (`popularity_gap_se` in eval's JSON), too.
NOISE_SE = 2.0
# What ranks items without training positives: their features alone.
NEW_ITEMS_ADVICE = ("its items have no training positives, so only their"
                    " item features can rank them: features that say"
                    " nothing of what users pick rank them at random at"
                    " best")
# How well a rating model orders each user's query items (the gain 2^r - 1).
ORDER_METRIC = "ndcg@3"

ADVICE = ("try: the baseline-anchored model (model.anchor=true, the"
          " default), the best validated checkpoint (the default of eval),"
          " fewer features (model.features, model.exclude_features),"
          " a smaller model (model.embed_dim, model.hidden), or fewer"
          " train.num_steps on small data")
# An anchored model already falls back to the baseline wherever its
# validation shows no gain; a loss means what was validated (its shares,
# median map, new-item prior) did not carry over from the validation users.
ADVICE_ANCHORED = ("try: more validation users (eval.val_fraction), so"
                   " that what is validated on them (the shares, the median"
                   " map, the new-item prior) carries over to these tasks,"
                   " or serving without the map (model.calibration=none)")

# Where the meta-parameters, before any adaptation, lose to the global mean
# (seen with the one-pass learners, whose empty support set gives them).
ADVICE_UNADAPTED = ("try: the baseline-anchored model (model.anchor=true, with"
                    " a MAML-family meta.algorithm), whose meta-parameters"
                    " predict the item means, or without it the cold blend"
                    " (model.cold_blend=validated, the default)")
# An anchored model's learned part at its validated share moves them too.
ADVICE_UNADAPTED_ANCHORED = ("its learned part moves the item means before"
                             " any rating; try: more validation users"
                             " (eval.val_fraction)")
ADVICE_UNADAPTED_COLD = (  # (MovieLens-1M's ratings alone: results.md)
    "its learned part moves the item means before any rating, and a user"
    " without ratings is served the adapted users' share of it; try:"
    " model.cold_share=validated (its own share, fitted before adaptation)")
# `metarec train`'s summary where the validation users had no task.
NO_VALIDATION = (
    "validation: no validation user has a task of existing items"
    " (eval.min_ratings to eval.max_ratings ratings of them), so nothing"
    " validated the model: the baseline-anchored model serves the baseline"
    " (shares 0) and the checkpoint kept is not chosen by its quality; give the"
    " data more users with ratings in that range (raise eval.max_ratings"
    " where users have more), or more validation users (eval.val_fraction)")


def no_tasks(ratings: str | None) -> str:
  """The warning of an evaluation in which no scenario has a task."""
  where = f"no user of {ratings}" if ratings else "no user"
  return (f"no scenario has a task: {where} has eval.min_ratings to"
          " eval.max_ratings ratings of one item class, so nothing was"
          " measured")


def no_new_item_tasks(results: dict[str, dict], item_new: np.ndarray,
                      ratings: str | None = None,
                      column: str | None = None) -> str | None:
  """The warning where the data has new items but neither new-item
  scenario (IC, UIC) a task: nothing measures the new items (their
  ratings too few per user, or the new-item column not the one meant),
  which a scenario without tasks otherwise passes in silence. `column`:
  the new-item column a generic dataset names (asked about), or None
  (MovieLens and synthetic data: no column to ask about)."""
  new = int(np.count_nonzero(item_new))
  if not new or any(int((results.get(name) or {}).get("tasks") or 0)
                    for name in ("IC", "UIC")):
    return None
  where = f"no user of {ratings}" if ratings else "no user"
  ask = (f" (is data.generic.new_item_col={column!r} the column meant?)"
         if column else "")
  return (f"IC, UIC: no task, though {new:,} items are new: {where} has"
          " eval.min_ratings to eval.max_ratings ratings of new items, so"
          f" nothing measures them{ask}")


def no_existing_item_tasks(results: dict[str, dict],
                           counts: Callable[[], np.ndarray] | None,
                           bounds: tuple[int, int],
                           ratings: str | None = None) -> str | None:
  """The warning where neither existing-item scenario (W, UC) has a task
  though another has: the main scenarios vanished in silence where every
  user had more than `eval.max_ratings` ratings (20 users of 150 each: only
  IC and UIC were reported). `counts()`: each store user's ratings of
  existing items (None: not known, as of a `--ratings` file, whose users
  are new: UC alone); `bounds`: `(eval.min_ratings, eval.max_ratings)`."""
  if any(int((results.get(name) or {}).get("tasks") or 0)
         for name in ("W", "UC")):
    return None
  lo, hi = bounds
  where = f"no user of {ratings}" if ratings else "no user"
  rated = np.zeros(0) if counts is None else counts()
  rated = rated[rated > 0]
  above, below = int((rated > hi).sum()), int((rated < lo).sum())
  cause = ""
  if above and above >= below:
    cause = (f"; {above:,} users have more (up to {int(rated.max()):,}):"
             " raise eval.max_ratings")
  elif below:
    cause = (f"; {below:,} users have fewer: lower eval.min_ratings, or"
             " give the data users with more ratings")
  return (f"{'UC' if ratings else 'W, UC'}: no task: {where} has {lo} to"
          f" {hi} ratings of existing items (eval.min_ratings,"
          f" eval.max_ratings), so nothing measures them{cause}")


def trained_users(ratings: str, users: np.ndarray, trained: np.ndarray,
                  user_ids: np.ndarray) -> str | None:
  """The warning of a `--ratings` file whose task users include users the
  run trained on (`trained`: bool per store user; `users`: the tasks'
  store indices), or None."""
  users = np.unique(users)
  seen = users[trained[users]]
  if not len(seen):
    return None
  return (f"{len(seen)} of the {len(users)} users with tasks in {ratings}"
          f" (e.g. user {user_ids[seen[0]]}) are training users of this run:"
          " the model was trained on their ratings, so their scores are"
          " optimistic; evaluate users the run never trained on")


def warnings_for(results: dict[str, dict], *, min_tasks: int = MIN_TASKS,
                 model_config=None, rating_range=None) -> list[str]:
  """One line per problem of a report's `{scenario: metrics}`.

  Warns when a scenario with tasks has a query MAE above the item-mean +
  user-bias baseline's by more than `TIE`, or (implicit feedback) a
  full-catalog nDCG@10 below the most-popular ranking's, with what to try
  (what `model_config`, the `model` section as built for the data, does not
  already do; on fewer than `min_tasks` tasks it says the gap is within
  noise instead), and when a scenario has fewer than `min_tasks` tasks.
  Scenarios without tasks say nothing. `rating_range`: the data's `(lowest,
  highest)` rating, where known (a tip for 0/1 ratings is left out on
  another scale)."""
  anchored = model_config is not None and is_anchored(model_config)
  unadapted = ((ADVICE_UNADAPTED_COLD if model_config.cold_share == "same"
                else ADVICE_UNADAPTED_ANCHORED) if anchored
               else ADVICE_UNADAPTED)
  out = []
  for name, m in results.items():
    tasks = int(m.get("tasks") or 0)
    if not tasks:
      continue
    if tasks < min_tasks:
      out.append(f"{name}: only {tasks} task(s) (fewer than {min_tasks}):"
                 " its metrics are too noisy to compare models")
    if "ranking" in m:
      out += _ranking_warning(name, m["ranking"], tasks, min_tasks,
                              model_config)
      out += _candidate_warnings(name, m["ranking"], tasks)
      continue
    base = (m.get("baselines") or {}).get(BASELINE, {}).get("mae")
    mae = m.get("mae")
    if mae is not None and base is not None and mae > base * (1 + TIE):
      what = _what_to_try(tasks, min_tasks,
                          ADVICE_ANCHORED if anchored else ADVICE)
      out.append(f"{name}: the model's query MAE {mae:.4f} is WORSE than the"
                 f" item-mean + user-bias baseline's {base:.4f}"
                 f" ({100 * (mae / base - 1):+.1f}%) on the same tasks; "
                 + what)
    out += _order_warning(name, m, tasks, min_tasks, model_config,
                          rating_range)
    out += _unadapted_warning(name, m, tasks, min_tasks, unadapted)
  return out


def curve_warnings(record: dict | None, *, min_tasks: int = MIN_TASKS,
                   model_config=None) -> list[str]:
  """One line per rating scenario of a support curve record
  (`eval.support_curve`) where, at some support sizes k with at least
  `min_tasks` tasks, the model's query MAE is above the item-mean + user-bias
  baseline's by more than `TIE` and by more than `NOISE_SE` standard errors
  of the per-task gap: the full-support figure can win while the users
  with one or two ratings, the cold-start users, lose."""
  anchored = model_config is not None and is_anchored(model_config)
  out = []
  for name, c in ((record or {}).get("scenarios") or {}).items():
    if RANKING_CRITERION in c:  # implicit feedback
      out += _ranking_curve_warning(name, c, min_tasks, model_config)
      continue
    worse = [(k, n, mae, base) for k, n, mae, base, se in zip(
        c.get("k", ()), c.get("tasks", ()), c.get("mae", ()),
        c.get("item_mean_user_bias", ()), c.get("mae_gap_se", ()))
             if n >= min_tasks and mae is not None and base is not None
             and se is not None and mae > base * (1 + TIE)
             and mae - base > NOISE_SE * se]
    if worse:
      k, n, mae, base = worse[0]
      sizes = ", ".join(str(w[0]) for w in worse)
      out.append(
          f"{name}: cut to {sizes} support rating(s), the model's query MAE"
          f" is WORSE than the item-mean + user-bias baseline's ({mae:.4f}"
          f" against {base:.4f} at {k}, {n} tasks; beyond twice the"
          " standard error of the gap) in the support curve: users with"
          " that few ratings are served worse than by the baseline; "
          + (ADVICE_ANCHORED if anchored else ADVICE))
  return out


def _ranking_curve_warning(name: str, c: dict, min_tasks: int,
                           model_config) -> list[str]:
  """`curve_warnings`' line of an implicit scenario: at some k with at
  least `min_tasks` tasks, nDCG@10 below the most-popular ranking's by more
  than `RANKING_TIE` and `NOISE_SE` standard errors of the per-task gap, as
  `_ranking_warning` weighs the full support (helper I)."""
  worse = [(k, n, model, base) for k, n, model, base, se in zip(
      c.get("k", ()), c.get("tasks", ()), c.get(RANKING_CRITERION, ()),
      c.get("popularity_" + RANKING_CRITERION, ()),
      c.get("popularity_gap_se", ()))
           if n >= min_tasks and model is not None and base is not None
           and se is not None and model < base * (1 - RANKING_TIE)
           and base - model > NOISE_SE * se]
  if not worse:
    return []
  k, n, model, base = worse[0]
  # Popularity tied with random: new items, as `_ranking_warning` says.
  new_items = (c.get("popularity_" + RANKING_CRITERION)
               == c.get("random_" + RANKING_CRITERION))
  which = "a random ranking's" if new_items else "the most-popular ranking's"
  return [f"{name}: cut to {', '.join(str(w[0]) for w in worse)} support"
          f" interaction(s), the model's full-catalog {RANKING_CRITERION} is"
          f" WORSE than {which} ({model:.4f} against {base:.4f} at {k}, {n}"
          " tasks; beyond twice the standard error of the gap) in the"
          " support curve: users with that few interactions are served"
          f" worse than by {'chance' if new_items else 'popularity'}; "
          + (NEW_ITEMS_ADVICE if new_items else _implicit_advice(model_config))]


def training_warnings(val: dict, curve: dict | None, *, model_config,
                      rating_range=None) -> list[str]:
  """The lines of `metarec train`'s summary: its validation `val` (the
  metrics of one validation) against the baselines (`warnings_for`), and
  its validation support curve `curve` (the record of
  `support_curve.evaluate_and_write`, None where none was written) at the
  small support sizes (`curve_warnings`), both named "validation"."""
  scenarios = (curve or {}).get("scenarios") or {}
  return warnings_for(
      {"validation": val}, model_config=model_config,
      rating_range=rating_range) + curve_warnings(
          {"scenarios": {"validation": scenarios["val"]}}
          if "val" in scenarios else None, model_config=model_config)


def _unadapted_warning(name: str, m: dict, tasks: int, min_tasks: int,
                       advice: str) -> list[str]:
  """The line of a rating scenario whose meta-parameters predict its query
  ratings worse than the global mean by more than `TIE`, with `advice`."""
  before = m.get("mae_unadapted")
  mean = ((m.get("baselines") or {}).get("global_mean") or {}).get("mae")
  if before is None or mean is None or not before > mean * (1 + TIE):
    return []
  gap = 100 * (before / mean - 1)
  return [f"{name}: before adaptation the model's query MAE {before:.4f} is"
          f" WORSE than the global mean's {mean:.4f} ({gap:+.1f}%); every"
          " user without ratings is served that model (`source` meta in"
          " `metarec serve`); " + _what_to_try(tasks, min_tasks, advice)]


def _order_warning(name: str, m: dict, tasks: int, min_tasks: int,
                   model_config, rating_range=None) -> list[str]:
  """The line of a rating scenario whose nDCG@3 (how well the model
  orders each user's query items) is below the item-mean + user-bias
  baseline's by more than `RANKING_TIE`: a model chosen and served by its
  MAE can still order items worse (seen on 0/1 ratings)."""
  model = m.get(ORDER_METRIC)
  base = (m.get("baselines") or {}).get(BASELINE, {}).get(ORDER_METRIC)
  if model is None or base is None or not model < base * (1 - RANKING_TIE):
    return []
  # Within twice the standard error of the per-task gap it is noise (on
  # ratings drawn at random, 181 tasks: a gap of 0.008, its error 0.019).
  se = m.get(f"{ORDER_METRIC}_gap_se")
  if se is not None and base - model <= NOISE_SE * se:
    return []
  tips = []
  if model_config is None or not model_config.query_rank_weight:
    tips.append("the listwise query term that trains the order of a"
                " user's items (model.query_rank_weight, e.g. 20)")
  if rating_range is None or tuple(rating_range) == (0, 1):
    tips.append("for like/dislike (0/1) ratings, implicit feedback"
                " (data.implicit.enabled=true, data.implicit.threshold=1)")
  if not tips:  # the listwise term is on, and the ratings are not 0/1
    tips.append("another model.query_rank_weight (the listwise query term"
                " that trains the order of a user's items)")
  what = _what_to_try(tasks, min_tasks, "try: " + ", or ".join(tips))
  return [f"{name}: the model orders the query items WORSE than the"
          f" item-mean + user-bias baseline ({ORDER_METRIC} {model:.4f}"
          f" against {base:.4f}, {100 * (model / base - 1):+.1f}%); " + what]


def _what_to_try(tasks: int, min_tasks: int, advice: str) -> str:
  """`advice`, or on fewer than `min_tasks` tasks none: the gap is noise."""
  if tasks < min_tasks:
    return f"on {tasks} task(s), too few to tell it from noise"
  return advice


def _implicit_advice(model_config) -> str:
  """What to try where popularity ranks better, less what is set."""
  tips = ["more meta-steps (train.num_steps)"]
  if model_config is None or model_config.loss not in RANKING_LOSSES:
    tips.append("a ranking loss (model.loss=bce, bpr or softmax), with"
                " which MeLU starts from popularity (model.popularity_prior)")
  elif not model_config.popularity_prior and model_config.name == "melu":
    tips.append("starting from popularity (model.popularity_prior=true)")
  if model_config is None or (model_config.name == "melu"
                              and not model_config.item_id):
    tips.append("item ids as a feature (model.item_id=true), so that the"
                " model can learn each item's popularity")
  return "try: " + ", ".join(tips[:-1]) + (" or " if len(tips) > 1 else
                                            "") + tips[-1]


def _ranking_warning(name: str, ranking: dict, tasks: int, min_tasks: int,
                     model_config) -> list[str]:
  """The line of an implicit scenario whose full-catalog nDCG@10 is below
  the most-popular ranking's by more than `RANKING_TIE` and by more than
  `NOISE_SE` standard errors of the per-task gap (none when it is not)."""
  baselines = ranking.get("baselines") or {}
  popular = (baselines.get("popularity") or {}).get("full") or {}
  model = (ranking.get("full") or {}).get(RANKING_CRITERION)
  base = popular.get(RANKING_CRITERION)
  if model is None or base is None or not model < base * (1 - RANKING_TIE):
    return []
  # Within twice the standard error of the paired gap it is noise: near a
  # random ranking (new items) one draw of the users moved nDCG@10 by 50%.
  se = ranking.get("popularity_gap_se")
  if se is not None and base - model <= NOISE_SE * se:
    return []
  # Equal counts tie, and the random baseline ties every candidate: a
  # popularity equal to it had no count to go by (new items: IC, UIC).
  new_items = popular == (baselines.get("random") or {}).get("full")
  which = ("a random ranking's (no candidate has a training positive to"
           " rank by popularity)" if new_items
           else "the most-popular ranking's")
  what = _what_to_try(tasks, min_tasks, NEW_ITEMS_ADVICE if new_items
                      else _implicit_advice(model_config))
  return [f"{name}: the model's full-catalog {RANKING_CRITERION} {model:.4f} is"
          f" WORSE than {which} {base:.4f}"
          f" ({100 * (model / base - 1):+.1f}%) on the same tasks; " + what]


def _candidate_warnings(name: str, ranking: dict, tasks: int) -> list[str]:
  """The lines of an implicit scenario whose candidates, for some tasks,
  say less than the metrics suggest: `unranked` tasks had none but their
  held-out positives (left out of the metrics), and `sampled_exhausted`
  ones no sample (`eval.implicit_eval`): a small catalog has fewer
  never-seen items than the negatives asked for, so `sampled` reads like
  `full` and says nothing of its own."""
  out = []
  unranked = ranking.get("unranked") or {}
  if any(unranked.values()):
    counts = " and ".join(f"{n} of {tasks} from the {how} ranking's metrics"
                          for how, n in unranked.items() if n)
    out.append(f"{name}: task(s) left out, {counts}: their candidates there"
               " are their held-out positives alone (the user interacted"
               " with every other item of the class), so any ranking of"
               " them is perfect")
  if exhausted := int(ranking.get("sampled_exhausted") or 0):
    out.append(f"{name}: the sampled ranking is no sample for {exhausted} of"
               f" {tasks} task(s): their item class has fewer items the user"
               " never interacted with than data.implicit.eval_negatives per"
               " held-out positive, so every such item is a candidate and"
               " `sampled` ranks all of them (the full ranking, less the"
               " user's other interactions); lower"
               " data.implicit.eval_negatives for a sampled ranking")
  return out
