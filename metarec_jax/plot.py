"""`metarec plot`: PNG figures of a work directory, in `WORKDIR/plots/`.

- `learning_curves.png`: from `metrics.jsonl`, the meta-training loss
  after adaptation and the query loss before it (labelled with the run's
  query loss, from its `config.json`), and the validation MAE after and
  before adaptation (implicit feedback: the validation nDCG@10, full
  catalog and sampled, what selects its checkpoints), against the step.
- `support_curve.png`: from `eval/support_curve.json` (written by the
  final evaluation of `metarec train` and by `metarec eval`), the query MAE
  against the number of support ratings, one panel per scenario: the
  adapted model, the unadapted meta-parameters and the item-mean +
  user-bias baseline.

matplotlib is a dependency of the package, imported only here and only
when plotting (it costs a second of start-up the other commands need not
pay).
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any

import numpy as np

from metarec_jax import atomic, config_io, meta
from metarec_jax.errors import InputError
from metarec_jax.eval import support_curve
from metarec_jax.workdir.criterion import RANKING_CRITERION

log = logging.getLogger("metarec")

PLOTS = "plots"

# (panel title, y label, ((tag, legend label), ...)); a panel is drawn
# where the run logged one of its tags: a rating run's validation logs
# `val/mae`, an implicit run's only `val/ranking/...`. `{loss}` is the
# run's query loss (`loss_label`).
LEARNING_PANELS = (
    ("meta-training", "query loss ({loss})",
     (("train/loss", "after adaptation (meta-loss)"),
      ("train/query_loss_unadapted", "before adaptation"))),
    ("validation", "query MAE",
     (("val/mae", "after adaptation"),
      ("val/mae_unadapted", "before adaptation"),
      # What is served where the median map is (train.select_on=served
      # selects checkpoints by it).
      ("val/median_map_mae", "through the median map"))),
    ("validation", "nDCG@10 after adaptation",
     ((f"val/ranking/full/{RANKING_CRITERION}",
       "full catalog (selects checkpoints)"),
      (f"val/ranking/sampled/{RANKING_CRITERION}", "sampled negatives"))),
)
# How a y label names each of `models.recommender.LOSSES`.
LOSS_NAMES = {"mse": "MSE", "huber": "Huber", "bce": "BCE", "bpr": "BPR",
              "softmax": "sampled softmax"}
SUPPORT_LINES = (("mae", "adapted"), ("mae_unadapted", "unadapted"),
                 ("item_mean_user_bias", "item mean + user bias"))
# Implicit feedback's curve (eval.support_curve._ranking_curve).
RANKING_LINES = (("ndcg@10", "adapted"), ("popularity_ndcg@10", "popularity"),
                 ("random_ndcg@10", "random"))


def read_metrics(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """`{tag: (steps, values)}` from a `metrics.jsonl`, sorted by step.

  A step logged twice (a resumed run repeats the steps after its last
  checkpoint) keeps its last value; nulls (non-finite values) are dropped;
  an unterminated last line (cut short by a kill) is not read.

  Raises:
    InputError: the file is missing or a line is not a JSON object.
  """
  if not os.path.exists(path):
    raise InputError("no metrics.jsonl: not a metarec work directory, or"
                     " training has not logged yet", path=path)
  points: dict[str, dict[int, float]] = {}
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        if not raw.endswith(b"\n"):
          break  # cut short within a character (below)
        raise InputError(f"not UTF-8 text (byte {e.start + 1} of the line)",
                         path=path, line=number) from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        step = int(record["step"])
        if not -2**63 <= step < 2**63:  # the int64 steps array below
          raise OverflowError(step)
      except (ValueError, KeyError, TypeError, OverflowError):
        if not line.endswith("\n"):
          # The last line, cut short by a kill or a full disk while a
          # training wrote it (the next resume drops it): not yet a row.
          break
        raise InputError("not a JSON object with a step", path=path,
                         line=number) from None
      for tag, value in record.items():
        if tag != "step" and isinstance(value, (int, float)):
          points.setdefault(tag, {})[step] = float(value)
  out = {}
  for tag, by_step in points.items():
    steps = np.array(sorted(by_step), np.int64)
    out[tag] = (steps, np.array([by_step[s] for s in steps], np.float64))
  return out


def _figure_class():
  try:
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise InputError("plotting needs matplotlib, which this installation"
                     " lacks: pip install matplotlib") from None
  return Figure


def _save(fig, path: str) -> str:
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  atomic.write_bytes(path, png.getvalue())
  return path


def loss_label(config) -> str:
  """How the meta-training panel names a run's query loss (`config`: its
  `config.json`): `model.query_loss` (else `model.loss`), plus the
  listwise term `model.query_rank_weight` adds to it."""
  kind = config.model.query_loss or config.model.loss
  label = LOSS_NAMES.get(kind, str(kind))
  weight = float(config.model.query_rank_weight)
  return f"{label} + {weight:g} x listwise" if weight else label


def _where_the_map_is_served(series: dict) -> dict:
  """`series` with `val/median_map_mae` kept at the validations that serve
  the map (`val/median_map` 1): elsewhere it is not what is served, and
  read beside `val/mae` as if it were."""
  mapped = series.get("val/median_map_mae")
  if mapped is None:
    return series
  series = dict(series)
  del series["val/median_map_mae"]
  steps, served = (np.asarray(a) for a in series.get("val/median_map",
                                                      ((), ())))
  mask = np.isin(mapped[0], steps[served == 1.0])
  if mask.any():
    series["val/median_map_mae"] = (mapped[0][mask], mapped[1][mask])
  return series


def plot_learning_curves(series: dict, path: str, loss: str = "meta-loss",
                         *, pretrain: bool = False) -> str | None:
  """Writes the learning curves of `read_metrics` output (None: nothing).

  Args:
    series: `read_metrics` output.
    path: the PNG to write.
    loss: the y label's name of the query loss (`loss_label`).
    pretrain: the run is `meta.algorithm=pretrain`, whose `train/loss` is
      its training loss, of support and query unadapted (it was drawn as
      the loss after adaptation, above the loss before it).
  """
  series = _where_the_map_is_served(series)
  relabel = {"train/loss": "support and query, unadapted (pretrain's"
                           " training loss)"} if pretrain else {}
  panels = [(title, ylabel.format(loss=loss),
             [(tag, relabel.get(tag, label)) for tag, label in lines
              if tag in series])
            for title, ylabel, lines in LEARNING_PANELS]
  panels = [p for p in panels if p[2]]
  if not panels:
    return None
  fig = _figure_class()(figsize=(5.5 * len(panels), 4), layout="constrained")
  # One step axis for every panel: training logged at 5 and 10 beside a
  # validation at 0 to 12 read as if training ended before the run.
  for ax, (title, ylabel, lines) in zip(fig.subplots(1, len(panels),
                                                     squeeze=False,
                                                     sharex=True)[0],
                                        panels):
    for tag, label in lines:
      steps, values = series[tag]
      ax.plot(steps, values, marker="o" if len(steps) < 30 else None,
              markersize=3, label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
  return _save(fig, path)


def support_series(record) -> tuple[str, dict, Any] | None:
  """What `plot_support_curve` draws of a `support_curve` record: `(what,
  {scenario: (k, tasks, {label: values})}, step)`, or None where no
  scenario has a curve.

  Raises:
    ValueError: `record` is not a support curve.
  """
  try:
    scenarios = {name: c for name, c in record.get("scenarios", {}).items()
                 if c.get("k")}
    if not scenarios:
      return None
    implicit = "mae" not in next(iter(scenarios.values()))
    lines = RANKING_LINES if implicit else SUPPORT_LINES
    out = {}
    for name, c in scenarios.items():
      k = np.asarray(c["k"], np.float64)
      tasks = [int(n) for n in c["tasks"]]
      values = {label: np.array([np.nan if v is None else v for v in c[key]],
                                np.float64) for key, label in lines}
      if k.ndim != 1 or len(tasks) != len(k) or any(
          v.shape != k.shape for v in values.values()):
        raise ValueError("curves of unequal lengths")
      # Support sizes label the ticks as integers on a log axis: an
      # Infinity or NaN ended the drawing in a traceback after the
      # learning curves were written, a 0 or -1 vanished from the axis.
      if not (np.isfinite(k).all() and (k >= 1).all()
              and (k == np.round(k)).all()):
        raise ValueError(f"support sizes k must be whole numbers >= 1,"
                         f" not {k.tolist()}")
      out[name] = (k, tasks, values)
  except (AttributeError, KeyError, TypeError, ValueError,
          OverflowError) as e:
    raise ValueError(f"not a support curve ({type(e).__name__}: {e})"
                     ) from None
  what = "nDCG@10 (full catalog)" if implicit else "query MAE"
  return what, out, record.get("step")


def plot_support_curve(series: tuple[str, dict, Any], path: str) -> str:
  """Writes the support-size curves of `support_series`."""
  what, scenarios, step = series
  fig = _figure_class()(figsize=(4.5 * len(scenarios), 4),
                        layout="constrained")
  axes = fig.subplots(1, len(scenarios), squeeze=False, sharey=True)[0]
  for ax, (name, (k, tasks, values)) in zip(axes, scenarios.items()):
    for label, v in values.items():
      ax.plot(k, v, marker="o", markersize=4, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(k)
    ax.set_xticklabels([f"{int(x)}\n({n})" for x, n in zip(k, tasks)])
    ax.set_title(name)
    ax.set_xlabel("support ratings (tasks)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(what)
  axes[0].legend()
  fig.suptitle(f"{what} against support size, step {step}")
  return _save(fig, path)


def plot_workdir(workdir: str) -> list[str]:
  """Writes every figure the work directory has data for; returns paths.

  Raises:
    InputError: no `metrics.jsonl`, a malformed input file, nothing to
      plot, or matplotlib is not installed.
  """
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  series = read_metrics(metrics_path)
  # The loss the run trained (a bare metrics.jsonl, without the config
  # `metarec train` writes beside it, gets a label without its kind).
  loss, pretrain = "meta-loss", False
  if os.path.exists(os.path.join(workdir, config_io.WORKDIR_CONFIG)):
    try:
      config = config_io.read_workdir_config(workdir)
      loss = loss_label(config)
      row = meta.ALGORITHMS.get(config.meta.algorithm)
      pretrain = row is not None and row.update == "pretrain"
    except InputError as e:
      # The config only names the loss: a damaged one costs the label,
      # not the figures (which come from metrics.jsonl alone).
      log.warning("%s; the loss is labelled %r", e, loss)
  curve_path = os.path.join(workdir, support_curve.FILENAME)
  try:  # every input read before any figure is written
    record = support_curve.read(workdir)
    curves = None if record is None else support_series(record)
  except json.JSONDecodeError as e:
    raise InputError(f"invalid JSON: {e.msg}", path=curve_path,
                     line=e.lineno) from None
  except UnicodeDecodeError as e:
    raise InputError(f"not UTF-8 text (at byte offset {e.start})",
                     path=curve_path) from None
  except ValueError as e:  # not a support curve
    raise InputError(str(e), path=curve_path) from None
  # Said, not left to an empty list: a run that has not logged yet.
  if not any(tag in series for _, _, lines in LEARNING_PANELS
             for tag, _ in lines):
    if curves is None:
      raise InputError("nothing to plot: no learning curves logged yet and"
                       f" no {support_curve.FILENAME} (`metarec eval` writes"
                       " one)", path=metrics_path)
    log.warning("%s: no learning curves logged yet; plotting only the"
                " support curve", metrics_path)
  _figure_class()  # fail early, before any output, without matplotlib
  out_dir = os.path.join(workdir, PLOTS)
  atomic.refuse_file_in_the_way(out_dir, named="--workdir")
  os.makedirs(out_dir, exist_ok=True)
  written = [plot_learning_curves(
      series, os.path.join(out_dir, "learning_curves.png"), loss,
      pretrain=pretrain)]
  if curves is not None:
    written.append(plot_support_curve(
        curves, os.path.join(out_dir, "support_curve.png")))
  return [p for p in written if p]
