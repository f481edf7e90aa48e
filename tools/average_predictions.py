"""The metrics of the average of several runs' query predictions.

An ensemble, measured without building one: each folder is what `metarec
eval --write_tasks=DIR` wrote for one run, the runs trained differently
(another `--config.train.seed`, another config) and evaluated on the same
tasks (the same data and `--config.eval.seed`), so that their predictions
files hold the same query ratings in the same order (checked). The
average is the mean of the runs' served predictions (`prediction`), ranked
by the mean of their unclipped ones where the files have them (as
`metarec eval` ranks).

Usage (from the repository root):

    metarec eval --workdir=runs/a --write_tasks=runs/a/tasks
    metarec eval --workdir=runs/b --write_tasks=runs/b/tasks
    python tools/average_predictions.py --workdir=runs/a \\
        --tasks=runs/a/tasks,runs/b/tasks

Prints one JSON line per scenario with tasks: the metrics that `metarec
eval` reports (`eval.metrics.summary`: MAE, RMSE, nDCG@1 and nDCG@3 with
the protocol's gain 2^r - 1 and the linear gain; tied items at their mean
gain), from
the file's values (exactly the values `metarec eval` scored), of
the first run alone (`first`), of the average (`average`) and of the
item-mean + user-bias baseline (`baseline`), and the average's nDCG@3
above the first run's and the baseline's. `--workdir` is one of the runs:
its store must hold the files' users and items, its config gives
the query size. Folders that do not match exit with status 2 and one
line naming the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metarec_jax import config_io  # noqa: E402
from metarec_jax.data import store as store_lib  # noqa: E402
from metarec_jax.data.convert import prepare  # noqa: E402
from metarec_jax.data.splits import SCENARIOS  # noqa: E402
from metarec_jax.errors import InputError  # noqa: E402
from metarec_jax.eval import metrics, predictions_file  # noqa: E402

BASELINE = "item_mean_user_bias"


def scenario_runs(folders: list[str], name: str, store,
                  width: int) -> list[dict[str, np.ndarray]] | None:
  """Each folder's `predictions_file.task_arrays` of scenario `name`
  (None where the first has no tasks).

  Raises:
    InputError: a folder's file holds other query ratings, or in another
      order, than the first folder's, or users or items `store` lacks.
  """
  runs = []
  for folder in folders:
    path = os.path.join(folder, name, predictions_file.FILE_NAME)
    a = predictions_file.task_arrays(path, store, width)
    unknown = int(((a["items"] < 0) | (a["users"][:, None] < 0)).sum())
    if unknown:
      # -1 breaks no tie as `metarec eval` did: the numbers would be wrong.
      raise InputError(
          f"{unknown} of its {a['items'].size} query ratings are of users or"
          " items that the store of --workdir lacks (--workdir must be one"
          " of the runs whose tasks these are)", path=path)
    if runs and not all(np.array_equal(a[key], runs[0][key])
                        for key in ("users", "items", "rating")):
      first = os.path.join(folders[0], name, predictions_file.FILE_NAME)
      raise InputError(
          f"its query ratings are not those of {first} (evaluate every run"
          " on the same data with the same --config.eval.seed)", path=path)
    runs.append(a)
  return runs if len(runs[0]["rating"]) else None


def report(runs: list[dict[str, np.ndarray]], floor: float) -> dict:
  """The metrics of the first run, the average and the baseline."""
  first = runs[0]
  true = first["rating"]
  mask = np.ones_like(true, bool)
  average = np.mean([r["prediction"] for r in runs], axis=0, dtype=np.float64)
  ranked = predictions_file.ranked
  average_ranked = np.mean([ranked(r, "prediction") for r in runs], axis=0,
                           dtype=np.float64)
  out = {"tasks": len(true), "runs": len(runs)}
  for label, pred, rank_by in (
      ("first", first["prediction"], ranked(first, "prediction")),
      ("average", average, average_ranked),
      ("baseline", first[BASELINE], ranked(first, BASELINE))):
    out[label] = metrics.summary(pred, true, mask, floor=floor,
                                 rank_by=rank_by)
  for label in ("first", "baseline"):
    out[f"ndcg@3_above_{label}"] = (out["average"]["ndcg@3"]
                                    - out[label]["ndcg@3"])
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True,
                      help="one of the runs (its store and query size)")
  parser.add_argument("--tasks", required=True,
                      help="comma-separated folders written by metarec eval"
                      " --write_tasks, the first one's run alone is `first`")
  parser.add_argument("--scenarios", default=",".join(SCENARIOS))
  args = parser.parse_args(argv)
  folders = [f for f in args.tasks.split(",") if f]
  if not folders:  # `scenario_runs` would index the first of none
    raise InputError("no folder given", path="--tasks")
  config = config_io.read_workdir_config(args.workdir)
  store = store_lib.open_store(prepare.store_path(config.data, args.workdir))
  floor = float(store.rating_range[0])
  try:
    for name in args.scenarios.split(","):
      runs = scenario_runs(folders, name, store, int(config.data.query_size))
      if runs is not None:
        print(json.dumps({"scenario": name, **report(runs, floor)}))
  except InputError as e:
    print(f"average_predictions: {e.message}", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  toolkit.run(main)
