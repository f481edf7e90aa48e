"""What the validated prior of new items' support ratings does to a run,
paired on one checkpoint.

An anchored model weighs a support rating of a new item `1 /
new_item_prior` of an existing item's in its user biases, the multiple
fitted at each validation (`metarec_jax/train/new_item_prior.py`). Two runs
with and without it differ by more than the multiple (another compiled
loss rounds differently, and 1500 steps turn that into another draw), so
this script measures it on one checkpoint: the checkpoint's trained
params validated again, once with the multiple held at 1 (as before the
key existed) and once fitted, each followed by its own median map as in
training; then every test scenario's MAE, and the item-cold scenarios'
MAE after 1 and 2 support ratings beside the unadapted one (as
`eval/support_curve.json` draws them).

Run:

    python tools/new_item_prior_effect.py runs/x [runs/y@500 ...]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from metarec_jax.data.splits import SCENARIOS  # noqa: E402
from metarec_jax.errors import InputError  # noqa: E402
from metarec_jax.eval import metrics as metrics_lib  # noqa: E402
from metarec_jax.eval.evaluate import Evaluator  # noqa: E402
from metarec_jax.eval.support_curve import truncate_support  # noqa: E402
from metarec_jax.train import median_map, validation  # noqa: E402
from metarec_jax.train import new_item_prior as new_prior_lib  # noqa: E402
from metarec_jax.workdir.restore import open_checkpoint, workdir_at  # noqa: E402

VARIANTS = {"held_at_1": (1.0,), "fitted": new_prior_lib.GRID}
COLD = ("IC", "UIC")  # support sets of new items
SIZES = (1, 2)


class _AsPlaced:
  """The validation's trainer, for params already placed for evaluation
  (a checkpoint opened on a one-axis mesh)."""

  def eval_params(self, params):
    return params


def effect(workdir: str, step: int | None = None) -> dict[str, dict]:
  """`{variant: {"multiple", scenario: MAE, "IC@1": (adapted, unadapted),
  ...}}` of a checkpoint for `VARIANTS` (None for a scenario without
  tasks)."""
  exp, mesh, state = open_checkpoint(workdir, step)
  if not new_prior_lib.present(state.params):
    raise InputError(f"{workdir}: the model has no new-item prior"
                     " (model.new_item_prior=same, or not anchored)")
  evaluator = Evaluator(exp, mesh)
  trained = validation.as_trained(state.params)  # what validation sees
  seed = int(exp.config.eval.seed)
  out = {}
  for variant, grid in VARIANTS.items():
    outcome = validation.validate(
        evaluator, _AsPlaced(), trained, 0, with_shares=True,
        with_map=median_map.present(trained), should_stop=lambda: False,
        new_item_priors=grid)
    _, served, scalars = outcome
    row = {"multiple": scalars["val/new_item_prior"]}
    for name in SCENARIOS:
      tasks = exp.split.scenarios[name]
      if not len(tasks):
        row[name] = None
        continue
      p = evaluator.predictions(served, tasks)
      row[name] = metrics_lib.mae(p.adapted, p.true, p.mask)
      if name in COLD:
        for k in SIZES:
          q = evaluator.predictions(served, truncate_support(tasks, k,
                                                             seed=seed))
          row[f"{name}@{k}"] = (metrics_lib.mae(q.adapted, q.true, q.mask),
                                metrics_lib.mae(q.unadapted, q.true, q.mask))
    out[variant] = row
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+", help="DIR or DIR@STEP")
  args = parser.parse_args()
  for spec in args.workdirs:
    table = effect(*workdir_at(spec))
    held, fitted = table["held_at_1"], table["fitted"]
    print(f"{spec}  multiple fitted: {fitted['multiple']:g}")
    for name in SCENARIOS:
      if held[name] is None:
        print(f"  {name:4s} -")
        continue
      cells = [f"  {name:4s} held at 1 {held[name]:.4f}  fitted"
               f" {fitted[name]:.4f} ({(fitted[name] / held[name] - 1) * 100:+.2f}%)"]
      for k in SIZES if name in COLD else ():
        a, b = held[f"{name}@{k}"], fitted[f"{name}@{k}"]
        cells.append(f"  {k} rating(s): {a[0]:.4f} -> {b[0]:.4f}"
                     f" (unadapted {a[1]:.4f} -> {b[1]:.4f})")
      print("".join(cells))


if __name__ == "__main__":
  main()
