"""How much the learned part of an anchored model helps, per scenario.

The anchored model (`model.anchor`) serves `share * model + (1 - share) *
baseline`, with shares that training fits on the validation users
(`metarec_jax/train/shares.py`). This script scores a work directory's
checkpoint on every scenario, the validation ones included, with both
shares set to each of a few values: share 0 is the item-mean + user-bias
baseline exactly; share 1 is everything training learned. Where share 1
is far above share 0, the learned part fits only the training users.

Usage (from the repository root):

    python tools/share_curve.py runs/x [runs/y@500 ...] [--shares=0,0.5,1]

`WORKDIR@STEP` picks a checkpoint (default: the one `metarec eval` uses).
Prints one line per scenario: tasks, then `share:MAE(difference to 0)`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from metarec_jax.data.splits import SCENARIOS  # noqa: E402
from metarec_jax.errors import InputError  # noqa: E402
from metarec_jax.eval.evaluate import Evaluator  # noqa: E402
from metarec_jax.train import validation  # noqa: E402
from metarec_jax.train import shares as shares_lib  # noqa: E402
from metarec_jax.workdir.restore import open_checkpoint, workdir_at  # noqa: E402

NAMES = shares_lib.SCENARIOS + SCENARIOS  # val, val_new, W, UC, IC, UIC


def share_maes(workdir: str, step: int | None = None,
               shares=(0.0, 0.5, 1.0)) -> dict[str, dict]:
  """`{scenario: {"tasks": N, share: query MAE, ...}}` of a checkpoint
  with both of its shares set to each of `shares` (and the median map,
  `model.calibration=median`, off, and new items' support ratings weighed
  as in training, `model.new_item_prior` 1: the curve is the shared
  prediction's, and share 0 the baseline exactly)."""
  exp, mesh, state = open_checkpoint(workdir, step)
  if not shares_lib.present(state.params):
    raise InputError(f"{workdir}: the model has no shares (model.anchor is"
                     " off)")
  state = state.replace(params=validation.as_trained(state.params))
  evaluator = Evaluator(exp, mesh)
  out = {name: {"tasks": len(exp.split.scenarios[name])} for name in NAMES}
  for share in shares:
    results = evaluator.evaluate(
        shares_lib.with_shares(state.params, (share, share)), NAMES)
    for name in NAMES:
      out[name][share] = results[name]["mae"]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+", help="WORKDIR or WORKDIR@STEP")
  parser.add_argument("--shares", default="0,0.5,1")
  args = parser.parse_args()
  try:
    shares = [float(v) for v in args.shares.split(",")]
  except ValueError:
    parser.error(f"--shares={args.shares}: comma-separated numbers")
  if not all(math.isfinite(s) for s in shares):
    parser.error(f"--shares={args.shares}: comma-separated finite numbers")
  for arg in args.workdirs:
    table = share_maes(*workdir_at(arg), shares)
    print(arg)
    for name, row in table.items():
      base = row.get(0.0)
      cells = " ".join(
          f"{s:g}:{row[s]:.4f}" + (f"({(row[s] / base - 1) * 100:+.2f}%)"
                                   if base and row[s] is not None else "")
          for s in shares if row[s] is not None)
      print(f"  {name:8s} {row['tasks']:5d} {cells}")


if __name__ == "__main__":
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  toolkit.run(main)
