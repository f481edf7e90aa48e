"""Evaluation: metrics, baselines and the cold-start protocol's scenarios."""

from __future__ import annotations

import logging
from typing import Iterable

from metarec_jax import config_io, experiment, runtime
from metarec_jax.data.splits import SCENARIOS
from metarec_jax.eval import verdicts

log = logging.getLogger("metarec")


def evaluate_workdir(workdir: str, *, step: int | None = None,
                     overrides: Iterable[tuple[str, str]] = (),
                     ratings: str | None = None,
                     write_tasks: str | None = None,
                     support_curve: bool = True) -> dict:
  """Evaluates a work directory's checkpoint on the protocol's scenarios.

  Args:
    workdir: a `metarec train` work directory.
    step: the checkpoint step (default: the newest).
    overrides: `(dotted key, text)` config overrides.
    ratings: a ratings file in the dataset's input format; its users are
      evaluated as new users (scenarios UC and UIC; W and IC are empty)
      instead of the store's own scenarios.
    write_tasks: a folder to write each scenario's support and query
      ratings to, in the dataset's input format, and the query predictions
      of the model and the baselines (`eval.predictions_file`).
    support_curve: also write the query MAE against support-set size of
      every scenario to `WORKDIR/eval/support_curve.json` (see
      `eval.support_curve`).

  Returns:
    `{"step": N, "scenarios": {"W": {...}, "UC": ..., "IC": ..., "UIC": ...},
    "warnings": [...]}` with the keys of docs/design.md; an empty scenario
    has `tasks: 0` and null metrics; `warnings` (`eval.verdicts`) says
    where the model lost to the item-mean + user-bias baseline and which
    scenarios have too few tasks.

  Raises:
    InputError: a bad work directory, config, checkpoint or ratings file.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from metarec_jax.data import ratings_io
  from metarec_jax.eval import predictions_file
  from metarec_jax.eval import support_curve as curves
  from metarec_jax.eval.evaluate import Evaluator
  from metarec_jax.eval.user_file import new_user_tasks
  from metarec_jax.train.restore import load_state
  config = config_io.apply_overrides(
      config_io.read_workdir_config(workdir), overrides)
  exp = experiment.build(config, workdir, log=log.info)
  if ratings:  # read before the checkpoint: a bad file fails fast
    tasksets = new_user_tasks(exp.store, ratings,
                              experiment.protocol_spec(config))
    log.info("%s: %d UC and %d UIC tasks of new users", ratings,
             len(tasksets["UC"]), len(tasksets["UIC"]))
  else:
    tasksets = {name: exp.split.scenarios[name] for name in SCENARIOS}
  mesh = runtime.make_mesh()
  state = load_state(exp, workdir, mesh, step=step)
  evaluator = Evaluator(exp, mesh)
  kept = {} if write_tasks else None
  results = evaluator.evaluate(state.params, SCENARIOS, tasksets=tasksets,
                               keep=kept)
  step = int(runtime.to_host(state.step))
  if write_tasks:
    files = {f"{name}/{predictions_file.FILE_NAME}":
             evaluator.predictions_text(p, tasksets[name])
             for name, p in kept.items()}
    ratings_io.write_tasks(write_tasks, tasksets, exp.store,
                           extra={"ratings": ratings, "step": step},
                           files=files)
    log.info("wrote the tasks' support and query ratings to %s", write_tasks)
  if not ratings:
    write_tensorboard(workdir, step, results,
                      active=jax.process_index() == 0)
  if support_curve:
    curves.evaluate_and_write(
        workdir, evaluator, state.params, tasksets, step=step,
        seed=int(config.eval.seed), write=jax.process_index() == 0)
  warnings = verdicts.warnings_for(results)
  for line in warnings:
    log.warning("%s", line)
  return {"step": step, "scenarios": results, "warnings": warnings}


def scalar_metrics(results: dict, *, baselines: bool = True
                   ) -> dict[str, float]:
  """`{"W/mae": .., "W/item_mean_user_bias/mae": .., ...}` of a report's
  `{scenario: metrics}`: every numeric metric (not the task count), and
  the baselines' unless `baselines=False`; null metrics are left out."""
  out = {}
  for scenario, m in results.items():
    for key, value in m.items():
      if key == "ranking":
        for how in ("full", "sampled"):
          for metric, v in value[how].items():
            if v is not None:
              out[f"{scenario}/ranking/{how}/{metric}"] = v
        if baselines:
          for name, hows in value["baselines"].items():
            for how, metrics in hows.items():
              for metric, v in metrics.items():
                if v is not None:
                  out[f"{scenario}/{name}/{how}/{metric}"] = v
      elif key == "baselines":
        if not baselines:
          continue
        for name, metrics in value.items():
          for metric, v in metrics.items():
            if v is not None:
              out[f"{scenario}/{name}/{metric}"] = v
      elif key != "tasks" and isinstance(value, (int, float)):
        out[f"{scenario}/{key}"] = value
  return out


def write_tensorboard(workdir: str, step: int, results: dict, *,
                      active: bool = True) -> None:
  """Adds an evaluation's metrics to the run's TensorBoard, run `eval`.

  Every scenario's metrics and baselines at the checkpoint's step, beside
  the training curves (`tensorboard --logdir=WORKDIR/tensorboard`).
  """
  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import reporting
  reporter = reporting.Reporter(workdir, active=active, run="eval",
                                jsonl=False)
  try:
    reporter.scalars(step, scalar_metrics(results))
  finally:
    reporter.close()


def format_table(report: dict) -> str:
  """A human-readable table of an `evaluate_workdir` report."""
  def f(x):
    return "    -" if x is None else f"{x:.4f}"
  if any("ranking" in m for m in report["scenarios"].values()):
    return _ranking_table(report, f)
  lines = [f"step {report['step']}",
           "scenario  tasks     MAE  unadapted    RMSE  nDCG@1  nDCG@3"
           "  | item+bias MAE  nDCG@3  | global MAE"]
  for name, m in report["scenarios"].items():
    base = m["baselines"]
    bias = base["item_mean_user_bias"]
    lines.append(
        f"{name:<8} {m['tasks']:6d}  {f(m['mae'])}     {f(m['mae_unadapted'])}"
        f"  {f(m['rmse'])}  {f(m['ndcg@1'])}  {f(m['ndcg@3'])}"
        f"  |        {f(bias['mae'])}  {f(bias['ndcg@3'])}  |     "
        f"{f(base['global_mean']['mae'])}")
  lines.append("nDCG: gain 2^rating - 1 (the protocol's); the JSON also has"
               " the linear gain (ndcg@k_linear)")
  return "\n".join(lines)


def _ranking_table(report: dict, f) -> str:
  """`format_table` of implicit data: top-k metrics and the baselines."""
  lines = [f"step {report['step']}",
           "scenario  tasks  candidates  HR@10  nDCG@10  Recall@20   MRR"
           "     AUC  | popularity HR@10 nDCG@10 | random nDCG@10"]
  for name, m in report["scenarios"].items():
    r = m["ranking"]
    for how in ("full", "sampled"):
      x = r[how]
      pop = r["baselines"]["popularity"][how]
      rnd = r["baselines"]["random"][how]
      lines.append(
          f"{name:<8} {m['tasks']:6d}  {how:<10} {f(x['hr@10'])}"
          f"  {f(x['ndcg@10'])}     {f(x['recall@20'])} {f(x['mrr'])}"
          f"  {f(x['auc'])}  |           {f(pop['hr@10'])}  "
          f"{f(pop['ndcg@10'])} |         {f(rnd['ndcg@10'])}")
  return "\n".join(lines)
