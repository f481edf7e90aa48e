"""Evaluation on the cold-start protocol's scenarios.

For every task: adapt the meta-parameters to the support set (the same
inner loop as training), predict the query ratings, and compare with the
meta-parameters' own predictions (`mae_unadapted`) and the model-free
baselines on the same tasks. Predictions are scored clipped to the rating
scale and ranked (nDCG) unclipped, as the served top-k ranks them: a clip
makes ties that say nothing of the order.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from metarec_jax import meta, runtime
from metarec_jax.data.splits import SCENARIOS, TaskSet
from metarec_jax.data.tasks import batch_shapes, bucket_widths, taskset_batches
from metarec_jax.eval import metrics as metrics_lib
from metarec_jax.eval.implicit_eval import RankingEvaluator
from metarec_jax.eval.ranking import gap_se
from metarec_jax.eval import predictions_file
from metarec_jax.data.baselines import BaselineStats
from metarec_jax.errors import Diverged, inner_settings
from metarec_jax.experiment import Experiment
from metarec_jax.runtime import AXIS, CompiledByShape, place

PyTree = Any
BASELINE = "item_mean_user_bias"  # the baseline whose ranking is not flat


@dataclasses.dataclass
class Predictions:
  """Per-task query predictions of one scenario, `[N, Q]` arrays
  (`adapted` and `unadapted` clipped to the rating scale, as scored;
  `adapted_unclipped`: as served; `ranked`: what nDCG ranks, as the served
  top-k does: the served scores before the median map,
  `Recommender.predict_ranked`; `unadapted_unclipped`: as served, what a
  validation fits the cold blend to, `train.cold_factors`)."""

  adapted: np.ndarray
  unadapted: np.ndarray
  true: np.ndarray
  mask: np.ndarray
  items: np.ndarray
  support_items: np.ndarray
  support_ratings: np.ndarray
  support_mask: np.ndarray
  adapted_unclipped: np.ndarray
  ranked: np.ndarray
  unadapted_unclipped: np.ndarray | None = None


class Evaluator:
  """Adapts and predicts task batches on the mesh; computes the metrics."""

  def __init__(self, exp: Experiment, mesh: Mesh, *,
               batch_tasks: int | None = None,
               interacted: np.ndarray | None = None,
               tasksets: dict[str, TaskSet] | None = None):
    """`interacted`: implicit feedback, `implicit.keys` of interactions
    beyond the store's (a `--ratings` file's), never drawn as negatives.
    `tasksets`: those it will evaluate (default: the split's scenarios);
    a batch holds at most as many tasks as the largest of them."""
    self.exp = exp
    n_dev = mesh.devices.size
    want = int(batch_tasks or exp.config.eval.batch_tasks)
    # Past the most tasks there are, a batch is padding: 24 tasks in
    # batches of eval.batch_tasks=100000 took 57 s and 7 GB instead of 4 s.
    sets = exp.split.scenarios if tasksets is None else tasksets
    want = min(want, max([len(t) for t in sets.values()], default=1))
    self.batch_tasks = max(n_dev, math.ceil(want / n_dev) * n_dev)
    self.query_width = int(exp.config.data.query_size)
    self.buckets = tuple(int(b) for b in exp.config.data.buckets)
    self.baselines = BaselineStats.from_split(exp.store, exp.split)
    self.lo, self.hi = exp.store.rating_range
    self.task_sharding = runtime.task_sharding(mesh)
    replicated = runtime.replicated(mesh)
    model, config = exp.model, exp.meta_config

    def predict_task(params, inner, task):
      adapted = meta.adapt(model.loss_fn, params, task["support"],
                           config=config, inner=inner)
      features = task["query"]["features"]
      served, ranked = model.predict_ranked(adapted, features)
      return served, model.predict(params, features), ranked

    per_device = jax.shard_map(
        jax.vmap(predict_task, in_axes=(None, None, 0)), mesh=mesh,
        in_specs=(P(), P(), P(AXIS)), out_specs=P(AXIS), check_vma=False)
    fn = jax.jit(per_device, out_shardings=replicated)
    self.predict = CompiledByShape(fn, name="eval")
    self.ranking = None
    if exp.implicit.enabled:
      self.ranking = RankingEvaluator(exp, mesh, batch_tasks=self.batch_tasks,
                                      query_width=self.query_width,
                                      buckets=self.buckets,
                                      interacted=interacted)

  def compile_jobs(self, meta_params: PyTree, tasks: TaskSet) -> list:
    """One job per bucket of `tasks` that compiles the adapt-and-predict
    step for it (`meta_params` may be abstract). Implicit data: the
    ranking's scoring step)."""
    if self.ranking is not None:
      return self.ranking.compile_jobs(meta_params, tasks)
    widths = np.unique(bucket_widths(tasks.support_sizes(), self.buckets))
    return [functools.partial(
        self.predict.compile, meta_params["model"], meta_params.get("inner"),
        batch_shapes(self.exp.tables.specs, self.batch_tasks, int(width),
                     self.query_width, self.task_sharding))
            for width in widths]

  def predictions(self, meta_params: PyTree, tasks: TaskSet,
                  should_stop: Callable[[], bool] | None = None
                  ) -> Predictions | None:
    """Predictions for every task of `tasks` (None if stopped early)."""
    n, q = len(tasks), self.query_width
    out = {k: np.zeros((n, q), np.float32)
           for k in ("adapted", "unadapted", "true", "ranked")}
    out["mask"] = np.zeros((n, q), bool)
    out["items"] = np.zeros((n, q), np.int64)
    support = {"support_items": [], "support_ratings": [], "support_mask": []}
    order = []
    params, inner = meta_params["model"], meta_params.get("inner")
    for index, batch, items in taskset_batches(tasks, self.exp.tables,
                                        batch_tasks=self.batch_tasks,
                                        buckets=self.buckets,
                                        query_width=q):
      if should_stop is not None and should_stop():
        return None
      device_batch = place(batch, self.task_sharding)
      adapted, unadapted, ranked = self.predict(params, inner, device_batch)
      k = len(index)
      out["adapted"][index] = np.asarray(adapted)[:k]
      out["ranked"][index] = np.asarray(ranked)[:k]
      out["unadapted"][index] = np.asarray(unadapted)[:k]
      out["true"][index] = batch["query"]["rating"][:k]
      out["mask"][index] = batch["query"]["mask"][:k]
      order.append(index)
      out["items"][index] = items["query"][:k]
      support["support_items"].append(items["support"][:k])
      support["support_ratings"].append(batch["support"]["rating"][:k])
      support["support_mask"].append(batch["support"]["mask"][:k])
    width = max([a.shape[1] for a in support["support_items"]], default=1)
    order = np.concatenate(order) if order else np.zeros(0, np.int64)
    inverse = np.argsort(order)
    for key, parts in support.items():
      padded = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in parts]
      stacked = (np.concatenate(padded) if padded else
                 np.zeros((0, width), bool if key == "support_mask" else
                          np.float32))
      out[key] = stacked[inverse]
    _check_finite(out["adapted"], out["mask"], self.exp.config.meta)
    out["adapted_unclipped"] = out["adapted"]
    out["unadapted_unclipped"] = out["unadapted"]
    for key in ("adapted", "unadapted"):
      out[key] = np.clip(out[key], self.lo, self.hi)
    return Predictions(**out)

  def baseline_predictions(self, p: Predictions, *, clip: bool = True
                           ) -> dict[str, np.ndarray]:
    """Both model-free baselines' `[N, Q]` predictions of `p`'s tasks
    (`clip`: as scored; else as ranked)."""
    return self.baselines.predict(p.support_items.astype(np.int64),
                                  p.support_ratings, p.support_mask, p.items,
                                  clip=clip)

  def scenario_metrics(self, p: Predictions, num_tasks: int) -> dict:
    """The JSON of one scenario (values None when there are no tasks)."""
    result = metrics_lib.summary(p.adapted, p.true, p.mask, floor=self.lo,
                                 rank_by=p.ranked)
    result["mae_unadapted"] = metrics_lib.mae(p.unadapted, p.true, p.mask)
    result["tasks"] = int(num_tasks)
    base = self.baseline_predictions(p)
    ranked = self.baseline_predictions(p, clip=False)
    result["baselines"] = {
        name: metrics_lib.summary(pred, p.true, p.mask, floor=self.lo,
                                  rank_by=ranked[name])
        for name, pred in base.items()}
    # How far a worse order than the baseline's is noise (`verdicts`):
    # the standard error of the per-task nDCG@3 gap.
    result["ndcg@3_gap_se"] = gap_se(*(
        metrics_lib.ndcg_per_task(r, p.true, p.mask, 3, floor=self.lo)
        for r in (p.ranked, ranked[BASELINE])))
    # ... and of the MAE gap (the support curve's `verdicts`): per task,
    # weighed by its query ratings, as the MAE is an average of those.
    counts = p.mask.sum(axis=1)
    rated = counts > 0  # (tasks without query ratings left out)
    result["mae_gap_se"] = gap_se(*(
        metrics_lib.mae_per_task(pred, p.true, p.mask)[rated]
        for pred in (p.adapted, base[BASELINE])), weights=counts[rated])
    return result

  def predictions_text(self, p: Predictions, tasks: TaskSet) -> str:
    """`p` as the text of a predictions file (`eval.predictions_file`)."""
    store = self.exp.store
    base = self.baseline_predictions(p)
    ranked = self.baseline_predictions(p, clip=False)
    unclipped = predictions_file.unclipped_column
    return predictions_file.format_predictions(
        np.asarray(store.user_ids)[tasks.users],
        np.asarray(store.item_ids)[p.items], p.mask,
        {"rating": p.true, "prediction": p.adapted,
         "unadapted": p.unadapted, **base,
         unclipped("prediction"): p.adapted_unclipped,
         unclipped(BASELINE): ranked[BASELINE],
         predictions_file.ranked_column("prediction"): p.ranked})

  def implicit_metrics(self, meta_params: PyTree, tasks: TaskSet,
                       should_stop: Callable[[], bool] | None = None,
                       whole: TaskSet | None = None) -> dict | None:
    """The JSON of one scenario of implicit data: rating metrics null,
    `ranking` as in `RankingEvaluator.scenario_metrics` (`whole`: as in
    its `task_metrics`)."""
    per_task = self.ranking.task_metrics(meta_params, tasks, should_stop,
                                         whole)
    if per_task is None:
      return None
    # The rating metrics' keys, every one null (as a rating scenario's
    # without tasks: `metrics.summary` of none).
    empty = np.zeros((0, 1))
    none = dict.fromkeys(metrics_lib.summary(empty, empty,
                                             empty.astype(bool)))
    return {**none, "mae_unadapted": None, "tasks": len(tasks),
            "baselines": {name: dict(none) for name in
                          ("global_mean", "item_mean_user_bias")},
            "ranking": self.ranking.scenario_metrics(per_task)}

  def evaluate(self, meta_params: PyTree,
               scenarios: tuple[str, ...] = SCENARIOS,
               tasksets: dict[str, TaskSet] | None = None,
               should_stop: Callable[[], bool] | None = None,
               keep: dict[str, Predictions] | None = None
               ) -> dict[str, dict] | None:
    """Metrics of every scenario (None if `should_stop` said stop).

    `keep`, when given, receives each scenario's `Predictions`.
    """
    tasksets = tasksets or self.exp.split.scenarios
    results = {}
    for name in scenarios:
      tasks = tasksets[name]
      if self.ranking is not None:
        results[name] = self.implicit_metrics(meta_params, tasks, should_stop)
        if results[name] is None:
          return None
        continue
      p = self.predictions(meta_params, tasks, should_stop)
      if p is None:
        return None
      results[name] = self.scenario_metrics(p, len(tasks))
      if keep is not None:
        keep[name] = p
    return results


def _check_finite(adapted: np.ndarray, mask: np.ndarray, meta_config) -> None:
  """Raises Diverged where adapted predictions of real query ratings
  are not finite: the metrics, the median map and checkpoint selection
  would read NaN (the meta-parameters are finite: checkpoints hold no
  other), so the adaptation itself diverges at these settings."""
  bad = int((~np.isfinite(adapted) & mask).sum())
  if bad:
    raise Diverged(
        f"the adapted predictions of {bad:,} of {int(mask.sum()):,} query"
        " ratings are not finite", inner_settings(meta_config))
