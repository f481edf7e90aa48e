"""Query MAE against support-set size: what each extra rating buys a user.

Every evaluation task's support set is cut to k = 1, 2, 4, 8, ... of its
ratings (a seeded random choice, nested: the k ratings kept are among the
2k kept at the next size) and evaluated again: the adapted model, the
unadapted meta-parameters and the item-mean + user-bias baseline, on the
same query ratings. At size k the tasks are those with at least k support
ratings, the same users at every k up to the smallest support size of the
scenario; the unadapted MAE (which ignores the support set) shows how much
the population changes beyond that.

Cutting the same users' support sets, rather than binning tasks by their
natural support size, keeps the curve free of the difference between
light and heavy raters; it measures the gain of an extra rating itself.
The curve is written to `WORKDIR/eval/support_curve.json`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Iterable

import numpy as np

from metarec_jax import atomic
from metarec_jax.data import hashing
from metarec_jax.data.splits import TaskSet

PyTree = Any
log = logging.getLogger("metarec")
FILENAME = os.path.join("eval", "support_curve.json")
_HASH_STREAM = 5  # distinct from the streams the protocol split draws


def sizes_for(tasks: TaskSet) -> tuple[int, ...]:
  """k = 1, 2, 4, ... up to the largest support set of `tasks`."""
  largest = int(tasks.support_sizes().max()) if len(tasks) else 0
  out, k = [], 1
  while k <= largest:
    out.append(k)
    k *= 2
  return tuple(out)


def with_support(tasks: TaskSet, k: int) -> TaskSet:
  """The tasks with at least `k` support ratings, whole."""
  return tasks.subset(np.flatnonzero(tasks.support_sizes() >= k))


def truncate_support(tasks: TaskSet, k: int, *, seed: int) -> TaskSet:
  """The tasks with at least `k` support ratings, each cut to `k` of them.

  The support ratings kept are the `k` with the smallest hash of (seed,
  user, item), so the cut is reproducible and nested across `k`; query
  ratings are untouched, and rows keep their order.
  """
  return _cut(with_support(tasks, k), k, seed=seed)


def _cut(tasks: TaskSet, k: int, *, seed: int) -> TaskSet:
  """`truncate_support` of tasks that all have `k` support ratings."""
  task = np.repeat(np.arange(len(tasks)), np.diff(tasks.offsets))
  key = hashing.uniform(seed, tasks.users[task], tasks.items, _HASH_STREAM)
  # Within each task: support rows first, in key order.
  order = np.lexsort((key, tasks.is_query, task))
  sorted_task = task[order]
  rank = np.arange(len(order)) - np.searchsorted(sorted_task, sorted_task)
  keep = np.zeros(len(task), bool)
  keep[order] = tasks.is_query[order] | (rank < k)
  counts = np.bincount(task[keep], minlength=len(tasks))
  return TaskSet(users=tasks.users,
                 offsets=np.concatenate([[0], np.cumsum(counts)]).astype(
                     np.int64),
                 items=tasks.items[keep], ratings=tasks.ratings[keep],
                 is_query=tasks.is_query[keep])


def curve(evaluator, meta_params: PyTree, tasks: TaskSet, *, seed: int,
          sizes: Iterable[int] | None = None,
          should_stop: Callable[[], bool] | None = None) -> dict | None:
  """The support curve of one scenario (None if `should_stop` said stop).

  Args:
    evaluator: an `eval.evaluate.Evaluator`.
    meta_params: `{"model": ..., "inner": ...}`.
    tasks: the scenario's tasks.
    seed: the seed of the cut (the protocol's `eval.seed`).
    sizes: the support sizes k (default `sizes_for(tasks)`).

  Returns:
    `{"k": [...], "tasks": [...], "mae": [...], "mae_unadapted": [...],
    "item_mean_user_bias": [...], "mae_gap_se": [...]}`, one entry per k
    (MAE None where a size has no query ratings; `mae_gap_se`: the
    standard error of the per-task gap between the model's MAE and the
    baseline's, None on fewer than two tasks).
  """
  if getattr(evaluator, "ranking", None) is not None:
    return _ranking_curve(evaluator, meta_params, tasks, seed=seed,
                          sizes=sizes, should_stop=should_stop)
  out = {"k": [], "tasks": [], "mae": [], "mae_unadapted": [],
         "item_mean_user_bias": [], "mae_gap_se": []}
  for k in (sizes_for(tasks) if sizes is None else sizes):
    cut = truncate_support(tasks, int(k), seed=seed)
    if not len(cut):
      continue
    p = evaluator.predictions(meta_params, cut, should_stop)
    if p is None:
      return None
    m = evaluator.scenario_metrics(p, len(cut))
    out["k"].append(int(k))
    out["tasks"].append(len(cut))
    out["mae"].append(m["mae"])
    out["mae_unadapted"].append(m["mae_unadapted"])
    out["item_mean_user_bias"].append(
        m["baselines"]["item_mean_user_bias"]["mae"])
    out["mae_gap_se"].append(m["mae_gap_se"])
  return out


# Implicit feedback: full-catalog metrics of the model and the baselines.
RANKING_CURVE = ("hr@10", "ndcg@10", "recall@20")


def _ranking_curve(evaluator, meta_params, tasks, *, seed, sizes,
                   should_stop) -> dict | None:
  """`curve` of implicit data: `{"k", "tasks", "hr@10", "ndcg@10",
  "recall@20", "popularity_hr@10", ..., "random_...", "gain_ndcg@10",
  "popularity_gap_se"}`: the full-catalog metrics per k, the relative gain
  of the model's nDCG@10 over popularity's, and the standard error of
  their per-task gap."""
  out = {"k": [], "tasks": []}
  for k in (sizes_for(tasks) if sizes is None else sizes):
    whole = with_support(tasks, int(k))
    if not len(whole):
      continue
    # The rest of each task's support stays out of the candidates, as in
    # `metarec eval`: a ranking that ignores the support (popularity)
    # then scores alike at every k on the same tasks.
    cut = _cut(whole, int(k), seed=seed)
    m = evaluator.implicit_metrics(meta_params, cut, should_stop, whole)
    if m is None:
      return None
    r = m["ranking"]
    out["k"].append(int(k))
    out["tasks"].append(len(cut))
    for prefix, full in (("", r["full"]),
                         ("popularity_", r["baselines"]["popularity"]["full"]),
                         ("random_", r["baselines"]["random"]["full"])):
      for key in RANKING_CURVE:
        out.setdefault(prefix + key, []).append(full[key])
    model, pop = out["ndcg@10"][-1], out["popularity_ndcg@10"][-1]
    out.setdefault("gain_ndcg@10", []).append(
        model / pop - 1.0 if model is not None and pop else None)
    # (what a loss to popularity is weighed against, `verdicts`)
    out.setdefault("popularity_gap_se", []).append(r.get("popularity_gap_se"))
  return out


def evaluate(evaluator, meta_params: PyTree, tasksets: dict[str, TaskSet], *,
             step: int, seed: int,
             should_stop: Callable[[], bool] | None = None) -> dict | None:
  """The support curves of several scenarios as the JSON record."""
  scenarios = {}
  for name, tasks in tasksets.items():
    c = curve(evaluator, meta_params, tasks, seed=seed,
              should_stop=should_stop)
    if c is None:
      return None
    scenarios[name] = c
  return {"step": int(step), "method": "support cut to k seeded random"
          " ratings (nested); tasks with at least k support ratings"
          + ("; implicit: full-catalog ranking metrics" if getattr(
              evaluator, "ranking", None) is not None else ""),
          "scenarios": scenarios}


def write_record(workdir: str, record: dict) -> str:
  """Writes `record` to `WORKDIR/eval/support_curve.json` atomically."""
  path = os.path.join(workdir, FILENAME)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  atomic.write_text(path, json.dumps(record, indent=1) + "\n")
  return path


def read(workdir: str) -> dict | None:
  """The record `write_record` left in `workdir`, or None."""
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def evaluate_and_write(workdir: str, evaluator, meta_params: PyTree,
                       tasksets: dict[str, TaskSet], *, step: int, seed: int,
                       write: bool = True,
                       should_stop: Callable[[], bool] | None = None
                       ) -> dict | None:
  """`evaluate`, then `write_record` where `write` (process 0).

  Every process must call it (the evaluation runs on the whole mesh).

  Returns:
    The record (on every process), or None where a stop cut it short.
  """
  record = evaluate(evaluator, meta_params, tasksets, step=step, seed=seed,
                    should_stop=should_stop)
  if record is not None and write:
    log.info("wrote %s", write_record(workdir, record))
  return record
