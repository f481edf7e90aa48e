"""An evaluation's metrics as TensorBoard scalars (training and `metarec eval`)."""

from __future__ import annotations

from metarec_jax.workdir import reporting


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


def write(workdir: str, step: int, results: dict, *,
                      active: bool = True) -> None:
  """Adds an evaluation's metrics to the run's TensorBoard, run `eval`.

  Every scenario's metrics and baselines at the checkpoint's step, beside
  the training curves (`tensorboard --logdir=WORKDIR/tensorboard`).
  """
  reporter = reporting.Reporter(workdir, active=active, run="eval",
                                jsonl=False)
  try:
    reporter.scalars(step, scalar_metrics(results))
  finally:
    reporter.close()
