"""How much the baseline's user-bias prior matters, per scenario.

The item-mean + user-bias baseline (`metarec_jax/data/baselines.py`)
shrinks a user's mean support residual with 3 pseudo-ratings. This script
scores the same baseline with other pseudo-counts on the very tasks
`metarec eval` uses (the recipe's protocol split, no training, no model),
as the relative MAE difference to the baseline's 3: whether a model's
fallback could gain by fitting the prior to the data.

Usage (from the repository root; each FOLDER holds the recipe's
`flags.txt`, as `tools/testbed.py` and `tools/ml100k_subset.py` write it):

    python tools/baseline_prior.py runs/testbed/few_sparse \\
        runs/ml100k-sized/generic [--config=configs/default.py]

Prints one line per scenario: tasks, then `prior:difference` for each
pseudo-count (`inf`: no user bias), then the baseline's MAE.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=wrong-import-position
import testbed  # noqa: E402
from metarec_jax import config_io, experiment  # noqa: E402
from metarec_jax.data.baselines import USER_PSEUDO, BaselineStats  # noqa: E402

PRIORS = (0.5, 1.0, 2.0, USER_PSEUDO, 5.0, 8.0, 12.0, 20.0, np.inf)


def scenario_maes(stats: BaselineStats, tasks) -> dict[float, float]:
  """The baseline's query MAE over all query ratings of `tasks` (as
  `metarec eval` computes it), for each prior of PRIORS."""
  n_tasks = len(tasks)
  task = np.repeat(np.arange(n_tasks), np.diff(tasks.offsets))
  items = tasks.items.astype(np.int64)
  ratings = tasks.ratings.astype(np.float64)
  support, query = ~tasks.is_query, tasks.is_query
  resid = np.bincount(task[support], minlength=n_tasks,
                      weights=(ratings - stats.item_mean[items])[support])
  counts = np.bincount(task[support], minlength=n_tasks)
  lo, hi = stats.rating_range
  out = {}
  for prior in PRIORS:
    bias = resid / (counts + prior)
    pred = np.clip(stats.item_mean[items] + bias[task], lo, hi)
    out[prior] = float(np.abs(pred - ratings)[query].mean())
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("folders", nargs="+")
  parser.add_argument("--config", default="configs/default.py")
  args = parser.parse_args()
  for folder in args.folders:
    config = config_io.load_config_file(args.config)
    config_io.apply_overrides(config, testbed.recipe_overrides(folder).items())
    with tempfile.TemporaryDirectory() as workdir:
      exp = experiment.build(config, workdir)
      stats = BaselineStats.from_split(exp.store, exp.split)
      print(folder)
      for name, tasks in exp.split.scenarios.items():
        if not len(tasks):
          continue
        maes = scenario_maes(stats, tasks)
        base = maes[USER_PSEUDO]
        cells = " ".join(f"{p:g}:{(m / base - 1) * 100:+.2f}%"
                         for p, m in maes.items())
        print(f"  {name:8s} {len(tasks):5d} {cells}  baseline {base:.4f}")


if __name__ == "__main__":
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  toolkit.run(main)
