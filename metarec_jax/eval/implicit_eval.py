"""Top-k evaluation of implicit feedback on the protocol's scenarios.

For every task: adapt the meta-parameters to its support positives (with
`data.implicit.negatives` sampled negatives per positive, as in training),
score the whole catalog, and rank the held-out positives

- `full`: against every item of the task's item class (existing or new)
  except the user's support items;
- `sampled`: against `data.implicit.eval_negatives` items per held-out
  positive that the user never interacted with (uniform, without
  replacement, seeded by `eval.seed`). Where the task's item class has
  fewer such items, every one of them is a candidate: that task's sampled
  ranking is no sample but the full one less the user's other
  interactions; the scenario's `sampled_exhausted` counts those tasks
  (`eval.verdicts` warns).

The same candidates are ranked by the training users' popularity (the
positives' counts over the training rows: the most popular first; equal
counts tie) and at random (every candidate tied), the baselines: ties
count at their expected value over every order of them (`ranking`). New
items have no training positives, so on IC and UIC the popularity ranking
is the random one (`verdicts` compares with it as such). Scoring is
vmapped over the tasks of a batch and scans the catalog in blocks of
`eval.catalog_block` items, so memory is bounded by batch x block,
whatever the catalog's size.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from metarec_jax.data import implicit
from metarec_jax.data.splits import TaskSet, ragged_arange
from metarec_jax.data.tasks import bucket_widths, row_shapes, taskset_batches
from metarec_jax.errors import Diverged, inner_settings
from metarec_jax.eval import ranking
from metarec_jax import meta, runtime
from metarec_jax.runtime import AXIS, CompiledByShape, place
from metarec_jax.workdir.criterion import RANKING_CRITERION

PyTree = Any
BASELINES = ("popularity", "random")


def item_blocks(tables, block: int) -> tuple[dict, int]:
  """Every item's feature rows as `[num_blocks, block(, L)]` arrays (the
  last block padded with index 0), and the item count."""
  num_items = len(next(iter(tables.item.values()))) if tables.item else 0
  nb = max(1, -(-num_items // block))
  out = {}
  for name, table in tables.item.items():
    table = np.asarray(table)
    pad = [(0, nb * block - num_items)] + [(0, 0)] * (table.ndim - 1)
    out[name] = np.pad(table, pad).reshape((nb, block) + table.shape[1:])
  return out, num_items


class RankingEvaluator:
  """Scores task batches against the catalog on the mesh; ranking metrics."""

  def __init__(self, exp, mesh: Mesh, *, batch_tasks: int,
               query_width: int, buckets: tuple[int, ...],
               interacted: np.ndarray | None = None):
    self.exp, self.batch_tasks = exp, batch_tasks
    self.query_width, self.buckets = query_width, buckets
    store, spec = exp.store, exp.implicit
    self.spec = spec
    self.seed = int(exp.config.eval.seed)
    self.interacted = implicit.interacted_keys(store)
    if interacted is not None and len(interacted):
      self.interacted = np.union1d(self.interacted, interacted)
    self.pools = implicit.item_pools(store)
    self.item_class = np.asarray(store.item_new).astype(np.int64)
    # Support negatives are uniform over the task's class (evaluation
    # tasks of new items have no training popularity to weight by).
    self.samplers = [implicit.NegativeSampler(self.interacted,
                                              store.num_items, pool)
                     for pool in self.pools]
    self.popularity = implicit.train_popularity(store, exp.split).astype(
        np.float64)
    block = int(exp.config.eval.catalog_block)
    self.blocks, self.num_items = item_blocks(exp.tables, block)
    self.task_sharding = runtime.task_sharding(mesh)
    self.replicated = runtime.replicated(mesh)
    model, config = exp.model, exp.meta_config

    def score_block(adapted, user_features, item_features):
      n = next(iter(item_features.values())).shape[0]
      features = dict(item_features)
      for name, value in user_features.items():
        features[name] = jax.numpy.broadcast_to(value, (n,) + value.shape)
      return model.predict(adapted, features)

    def score_task(params, inner, support, user_features, blocks):
      adapted = meta.adapt(model.loss_fn, params, support, config=config,
                           inner=inner)
      scores = jax.lax.map(
          lambda feats: score_block(adapted, user_features, feats), blocks)
      return scores.reshape(-1)

    per_device = jax.shard_map(
        jax.vmap(score_task, in_axes=(None, None, 0, 0, None)), mesh=mesh,
        in_specs=(P(), P(), P(AXIS), P(AXIS), P()), out_specs=P(AXIS),
        check_vma=False)
    self.score = CompiledByShape(
        jax.jit(per_device, out_shardings=self.replicated), name="eval_rank")

  def compile_jobs(self, meta_params: PyTree, tasks: TaskSet) -> list:
    """One job per support bucket of `tasks` that compiles the scoring
    step for it (`meta_params` may be abstract)."""
    widths = np.unique(bucket_widths(tasks.support_sizes(), self.buckets))
    specs = self.exp.tables.specs
    users = {s.name: jax.ShapeDtypeStruct(
        (self.batch_tasks,) + ((s.max_len,) if s.kind == "list" else ()),
        np.int32, sharding=self.task_sharding)
             for s in specs if s.side == "user"}
    blocks = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=self.replicated), self.blocks)
    grow = 1 + self.spec.negatives
    return [functools.partial(
        self.score.compile, meta_params["model"], meta_params.get("inner"),
        row_shapes(specs, self.batch_tasks, int(w) * grow,
                   self.task_sharding), users, blocks) for w in widths]

  def _support(self, users: np.ndarray, classes: np.ndarray,
               items: np.ndarray, mask: np.ndarray, query: np.ndarray,
               query_mask: np.ndarray) -> dict:
    """Support rows: the positives, then their sampled negatives, drawn
    as a server would, not knowing the tasks' `query` positives."""
    neg = np.zeros((len(users), self.spec.negatives * items.shape[1]),
                   np.int32)
    neg_mask = np.zeros(neg.shape, bool)
    for c, sampler in enumerate(self.samplers):
      sel = classes == c
      if sel.any() and self.spec.negatives:
        neg[sel], neg_mask[sel] = implicit.support_negatives(
            sampler, users[sel], classes[sel], mask[sel],
            self.spec.negatives, self.seed,
            sampler.held_out(query[sel], query_mask[sel]))
    labels = np.concatenate([np.ones(items.shape, np.float32),
                             np.zeros(neg.shape, np.float32)], 1)
    return self.exp.tables.rows(users, np.concatenate([items, neg], 1),
                                labels, np.concatenate([mask, neg_mask], 1))

  def task_metrics(self, meta_params: PyTree, tasks: TaskSet,
                   should_stop: Callable[[], bool] | None = None,
                   whole: TaskSet | None = None) -> dict | None:
    """Per-task metric arrays: `{"model"|"popularity"|"random": {"full"|
    "sampled": {metric: f64 [N]}}, "exhausted": bool [N], "unranked":
    {"full"|"sampled": bool [N]}}` (None if stopped early); `exhausted`:
    the task's sampled candidates are every item of its class the user
    never interacted with, fewer than asked; `unranked`: its candidates
    there are its held-out positives alone (nothing to rank them against:
    left out of that ranking's metrics, `ranking.metrics`).

    `whole`: the same tasks with all their support (the support curve
    adapts on a cut of it): the support items beyond the cut are known
    interactions, left out of the full ranking's candidates as the cut's
    are, not negatives that a ranker putting them first is scored down
    for (the curve's popularity ranking moved with the cut's size)."""
    n, num_items = len(tasks), self.num_items
    keys = ranking.metric_keys()
    out = {who: {how: {k: np.full(n, np.nan) for k in keys}
                 for how in ("full", "sampled")}
           for who in ("model",) + BASELINES}
    out["exhausted"] = np.zeros(n, bool)
    out["unranked"] = {how: np.zeros(n, bool) for how in ("full", "sampled")}
    params, inner = meta_params["model"], meta_params.get("inner")
    user_tables = self.exp.tables.user
    for index, batch, items in taskset_batches(
        tasks, self.exp.tables, batch_tasks=self.batch_tasks,
        buckets=self.buckets, query_width=self.query_width):
      if should_stop is not None and should_stop():
        return None
      k = len(index)
      users = np.zeros(self.batch_tasks, np.int64)
      users[:k] = tasks.users[index]
      q_items, q_mask = items["query"], batch["query"]["mask"]
      classes = self.item_class[q_items[:, 0]]
      support = self._support(users, classes, items["support"],
                              batch["support"]["mask"], q_items, q_mask)
      user_features = {name: np.asarray(t)[users]
                       for name, t in user_tables.items()}
      scores = np.asarray(self.score(
          params, inner, place(support, self.task_sharding),
          place(user_features, self.task_sharding),
          place(self.blocks, self.replicated)))[:k, :num_items]
      rows = np.arange(k)[:, None]
      positive = np.zeros((k, num_items), bool)
      positive[np.broadcast_to(rows, q_items[:k].shape)[q_mask[:k]],
               q_items[:k][q_mask[:k]]] = True
      seen = np.zeros((k, num_items), bool)
      s_items, s_mask = items["support"][:k], batch["support"]["mask"][:k]
      seen[np.broadcast_to(rows, s_items.shape)[s_mask], s_items[s_mask]] = (
          True)
      if whole is not None:
        counts = np.diff(whole.offsets)[index]
        at = ragged_arange(whole.offsets[index], counts)
        known = ~whole.is_query[at]
        seen[np.repeat(np.arange(k), counts)[known], whole.items[at][known]] = (
            True)
      full = (self.item_class[None, :] == classes[:k, None]) & ~seen
      _check_finite(scores, full, self.exp.config.meta)
      asked = self.spec.eval_negatives * positive.sum(1)
      drawn = implicit.eval_candidates(
          self.interacted, num_items, users[:k], self.pools, classes[:k],
          asked, self.seed)
      # Fewer drawn than asked: the class ran out of never-seen items, so
      # the "sample" holds all of them (a task without held-out positives
      # asks for none and is left out of the metrics).
      out["exhausted"][index] = drawn.sum(1) < asked
      sampled = positive | drawn
      for how, cand in (("full", full), ("sampled", sampled)):
        out["unranked"][how][index] = (positive.any(1)
                                       & ~(cand & ~positive).any(1))
      # Ties count at their expected value (`ranking`): the random
      # ranking is every candidate tied, and a class of items scored alike
      # (popularity's new items, all 0; the model's, by their features)
      # ranks as randomly as it was scored.
      by = {"model": scores, "popularity": self.popularity[None, :],
            "random": np.zeros((1, num_items))}
      for who, s in by.items():
        for how, cand in (("full", full), ("sampled", sampled)):
          for key, v in ranking.metrics(s, cand, positive).items():
            out[who][how][key][index] = v
    return out

  def scenario_metrics(self, per_task: dict) -> dict:
    """The `ranking` entry of a scenario's JSON from `task_metrics`, with
    `sampled_exhausted`: how many tasks' sampled candidates are every item
    the user never interacted with (their `sampled` is no sample),
    `unranked`: how many tasks had no candidate but their positives, in
    the full and the sampled ranking (left out of its metrics), and
    `popularity_gap_se`: the standard error of the model's full-catalog
    nDCG@10 less popularity's, task by task (what a gap is judged
    against: near a random ranking's nDCG@10 of 0.01, one draw of the
    users moves it by half)."""
    def both(who):
      return {how: ranking.summarise(per_task[who][how])
              for how in ("full", "sampled")}
    key = RANKING_CRITERION
    return {**both("model"),
            "baselines": {who: both(who) for who in BASELINES},
            "sampled_exhausted": int(per_task["exhausted"].sum()),
            "unranked": {how: int(v.sum())
                         for how, v in per_task["unranked"].items()},
            "popularity_gap_se": ranking.gap_se(
                per_task["model"]["full"][key],
                per_task["popularity"]["full"][key])}


def _check_finite(scores: np.ndarray, candidates: np.ndarray,
                  meta_config) -> None:
  """Raises Diverged where an adapted model scores a candidate item
  with a value that is not finite: ranked, NaN sorts last and every
  metric reads as a (bad) ranking instead of the adaptation's divergence
  (the meta-parameters are finite: checkpoints hold no other)."""
  bad = (~np.isfinite(scores) & candidates).any(axis=1)
  if bad.any():
    raise Diverged(
        f"the adapted scores of {int(bad.sum()):,} task(s) (of a batch of"
        f" {len(bad):,}) are not finite", inner_settings(meta_config))
