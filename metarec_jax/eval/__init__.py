"""Evaluation: metrics, baselines and the cold-start protocol's scenarios."""

from __future__ import annotations

import logging
from typing import Iterable

from metarec_jax import config_io, experiment, runtime
from metarec_jax.data.splits import SCENARIOS

log = logging.getLogger("metarec")


def evaluate_workdir(workdir: str, *, step: int | None = None,
                     overrides: Iterable[tuple[str, str]] = (),
                     support_curve: bool = True) -> dict:
  """Evaluates a work directory's checkpoint on the protocol's scenarios.

  With `support_curve`, also writes the query MAE against support-set size
  of every scenario to `WORKDIR/eval/support_curve.json` (see
  `eval.support_curve`).

  Returns:
    `{"step": N, "scenarios": {"W": {...}, "UC": ..., "IC": ..., "UIC": ...}}`
    with the keys of DESIGN.md; an empty scenario has `tasks: 0` and null
    metrics.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from metarec_jax.eval import support_curve as curves
  from metarec_jax.eval.evaluate import Evaluator
  from metarec_jax.train.restore import load_state
  config = config_io.apply_overrides(
      config_io.read_workdir_config(workdir), overrides)
  exp = experiment.build(config, workdir, log=log.info)
  mesh = runtime.make_mesh()
  state = load_state(exp, workdir, mesh, step=step)
  evaluator = Evaluator(exp, mesh)
  results = evaluator.evaluate(state.params, SCENARIOS)
  step = int(jax.device_get(state.step))
  if support_curve:
    curves.evaluate_and_write(
        workdir, evaluator, state.params,
        {name: exp.split.scenarios[name] for name in SCENARIOS}, step=step,
        seed=int(config.eval.seed), write=jax.process_index() == 0)
  return {"step": step, "scenarios": results}


def format_table(report: dict) -> str:
  """A human-readable table of an `evaluate_workdir` report."""
  def f(x):
    return "    -" if x is None else f"{x:.4f}"
  lines = [f"step {report['step']}",
           "scenario  tasks     MAE  unadapted    RMSE  nDCG@1  nDCG@3"
           "  | item+bias MAE  global MAE"]
  for name, m in report["scenarios"].items():
    base = m["baselines"]
    lines.append(
        f"{name:<8} {m['tasks']:6d}  {f(m['mae'])}     {f(m['mae_unadapted'])}"
        f"  {f(m['rmse'])}  {f(m['ndcg@1'])}  {f(m['ndcg@3'])}"
        f"  |        {f(base['item_mean_user_bias']['mae'])}      "
        f"{f(base['global_mean']['mae'])}")
  return "\n".join(lines)
