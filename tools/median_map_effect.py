"""How much of a run's MAE the median map (`model.calibration=median`)
accounts for, and what the same map does for the baseline.

The anchored model serves its prediction through a monotone map to the
median of the validation ratings (`metarec_jax/train/median_map.py`). MAE
rewards that for any predictor, the item-mean + user-bias baseline
included, so this script separates the two gains. Per scenario of a work
directory's checkpoint (the best validated one, or `DIR@STEP`):

- `served`: the MAE `metarec eval` reports (with the checkpoint's map);
- `unmapped`: the same model with the identity map;
- `baseline`: the item-mean + user-bias baseline, as `metarec eval`
  reports it (the frozen bar);
- `baseline_mapped`: that baseline through a map fitted the same way on the
  baseline's own validation predictions (both validation scenarios'
  rows, `median_map.fit`), applied where its evidence holds.

Run:

    python tools/median_map_effect.py runs/x [runs/y@500 ...]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metarec_jax.data.splits import SCENARIOS  # noqa: E402
from metarec_jax.errors import InputError  # noqa: E402
from metarec_jax.eval import metrics as metrics_lib  # noqa: E402
from metarec_jax.eval.evaluate import Evaluator  # noqa: E402
from metarec_jax.train import median_map  # noqa: E402
from metarec_jax.train import shares as shares_lib  # noqa: E402
from metarec_jax.workdir.restore import open_checkpoint, workdir_at  # noqa: E402

BASELINE = "item_mean_user_bias"


def effect(workdir: str, step: int | None = None) -> dict[str, dict]:
  """`{scenario: {"tasks", "served", "unmapped", "baseline",
  "baseline_mapped"}}` of a checkpoint (MAEs; None without tasks)."""
  exp, mesh, state = open_checkpoint(workdir, step)
  if not median_map.present(state.params):
    raise InputError(f"{workdir}: the model has no median map"
                     " (model.calibration=none, or implicit feedback)")
  evaluator = Evaluator(exp, mesh)
  names = shares_lib.SCENARIOS + SCENARIOS
  served, unmapped = {}, {}
  evaluator.evaluate(state.params, names, keep=served)
  evaluator.evaluate(median_map.identity(state.params), names, keep=unmapped)
  base = {name: evaluator.baseline_predictions(p)[BASELINE]
          for name, p in unmapped.items()}
  at = median_map.knots(evaluator.lo, evaluator.hi)
  parts = {name: (np.clip(base[name], at[0], at[-1]), p.true, p.mask)
           for name, p in unmapped.items()
           if name in shares_lib.SCENARIOS and p.mask.any()}
  offsets, verdicts = median_map.fit(parts, at) if parts else (None, {})
  out = {}
  for name in names:
    p = unmapped.get(name)
    row = {"tasks": len(exp.split.scenarios[name])}
    if p is None or not p.mask.any():
      out[name] = {**row, "served": None, "unmapped": None,
                   "baseline": None, "baseline_mapped": None}
      continue
    # The kind of item of a scenario: W, UC and val existing, the rest new.
    kind = shares_lib.SCENARIOS[0 if name in ("val", "W", "UC") else 1]
    mapped = base[name]
    if offsets is not None and verdicts.get(kind, (False,))[0]:
      mapped = median_map.mapped(mapped, at, offsets)
    mapped = np.clip(mapped, evaluator.lo, evaluator.hi)
    out[name] = {
        **row,
        "served": metrics_lib.mae(served[name].adapted, p.true, p.mask),
        "unmapped": metrics_lib.mae(p.adapted, p.true, p.mask),
        "baseline": metrics_lib.mae(base[name], p.true, p.mask),
        "baseline_mapped": metrics_lib.mae(mapped, p.true, p.mask)}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+", help="DIR or DIR@STEP")
  args = parser.parse_args()
  for spec in args.workdirs:
    table = effect(*workdir_at(spec))
    print(spec)
    for name, row in table.items():
      if row["served"] is None:
        print(f"  {name:8s} {row['tasks']:5d} tasks  -")
        continue
      b = row["baseline"]
      print(f"  {name:8s} {row['tasks']:5d} tasks  served {row['served']:.4f}"
            f" ({(row['served'] / b - 1) * 100:+.2f}%)  unmapped"
            f" {row['unmapped']:.4f} ({(row['unmapped'] / b - 1) * 100:+.2f}%)"
            f"  baseline {b:.4f}  baseline mapped {row['baseline_mapped']:.4f}"
            f" ({(row['baseline_mapped'] / b - 1) * 100:+.2f}%)")


if __name__ == "__main__":
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  toolkit.run(main)
