"""What the validated prior of new items' support ratings does to a run,
paired on one checkpoint.

An anchored model weighs a support rating of a new item `1 /
new_item_prior` of an existing item's in its user biases, the multiple
fitted at each validation, and (`model.new_item_min_support=validated`)
leaves such ratings out below a validated minimum count
(`metarec_jax/train/new_item_prior.py`, `min_support.py`). Two runs with
and without them differ by more than these (another compiled loss rounds
differently, and 1500 steps turn that into another draw), so this script
measures them on one checkpoint: the checkpoint's trained params
validated again, with both held at 1 (as before the keys existed), with
the multiple fitted and the minimum held at 1, and with both fitted (as
the model serves; the minimum of all ratings, `model.warm_min_support`,
is held or fitted with the new items' one, and "minimum" reports the
new items'),
each followed by its own median map as in training; then every test
scenario's MAE, and the item-cold scenarios' MAE after 1 and 2 support
ratings beside the unadapted one (as `eval/support_curve.json` draws
them).

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
from metarec_jax.train import min_support as min_support_lib  # noqa: E402
from metarec_jax.train import new_item_prior as new_prior_lib  # noqa: E402
from metarec_jax.workdir.restore import open_checkpoint, workdir_at  # noqa: E402

# variant: (candidates of the multiple, of the minimum)
VARIANTS = {"held_at_1": ((1.0,), (1.0,)),
            "fitted": (new_prior_lib.GRID, (1.0,)),
            "with_minimum": (new_prior_lib.GRID, min_support_lib.GRID)}
COLD = ("IC", "UIC")  # support sets of new items
SIZES = (1, 2)


class _AsPlaced:
  """The validation's trainer, for params already placed for evaluation
  (a checkpoint opened on a one-axis mesh)."""

  def eval_params(self, params):
    return params


def effect(workdir: str, step: int | None = None) -> dict[str, dict]:
  """`{variant: {"multiple", "minimum", scenario: MAE, "IC@1": (adapted,
  unadapted), ...}}` of a checkpoint for `VARIANTS` (None for a scenario
  without tasks; the minimum 1 for a model without one)."""
  exp, mesh, state = open_checkpoint(workdir, step)
  if not new_prior_lib.present(state.params):
    raise InputError(f"{workdir}: the model has no new-item prior"
                     " (model.new_item_prior=same, or not anchored)")
  evaluator = Evaluator(exp, mesh)
  trained = validation.as_trained(state.params)  # what validation sees
  seed = int(exp.config.eval.seed)
  out = {}
  for variant, (grid, minima) in VARIANTS.items():
    outcome = validation.validate(
        evaluator, _AsPlaced(), trained, 0, with_shares=True,
        with_map=median_map.present(trained), should_stop=lambda: False,
        new_item_priors=grid, min_supports=minima)
    _, served, scalars = outcome
    row = {"multiple": scalars["val/new_item_prior"],
           "minimum": scalars.get("val/new_item_min_support", 1.0)}
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
    held = table["held_at_1"]
    print(f"{spec}  multiple fitted: {table['fitted']['multiple']:g},"
          f" minimum fitted: {table['with_minimum']['minimum']:g}")
    for name in SCENARIOS:
      if held[name] is None:
        print(f"  {name:4s} -")
        continue
      cells = [f"  {name:4s} " + "  ".join(
          f"{variant} {row[name]:.4f}"
          + (f" ({(row[name] / held[name] - 1) * 100:+.2f}%)"
             if variant != "held_at_1" else "")
          for variant, row in table.items())]
      for k in SIZES if name in COLD else ():
        cells.append(f"  {k} rating(s): " + " -> ".join(
            f"{row[f'{name}@{k}'][0]:.4f}" for row in table.values())
            + f" (unadapted {held[f'{name}@{k}'][1]:.4f})")
      print("".join(cells))


if __name__ == "__main__":
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  toolkit.run(main)
