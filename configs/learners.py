"""Gradient-based, metric, amortised, hybrid and distilled learners side by side.

Every variant changes only the algorithm of a base config (the data, the
protocol, the model and the budget stay fixed). `ARG` is
`VARIANT[@BASE]`; BASE is a module of `configs/` (default `default`).

    python tools/compare.py --out=runs/learners --seeds=0,1,2 \\
        --spec=configs/learners.py:melu_ml1m@$PWD/runs/learners/runs/maml/seed-{seed} \\
        --config.data.root=/path/to/ml-1m

The spec's ARG is `BASE[@TEACHER]`: TEACHER is the work directory of the
distilled student's teacher (`{seed}` becomes `train.seed`; above: the
comparison's own MAML run of the same seed, so `maml` must come first).
One variant alone:

    metarec train --config=configs/learners.py:metric@melu_ml1m \\
        --workdir=runs/metric --config.data.root=/path/to/ml-1m

Variants: maml (second order), fomaml, metric (rating-weighted prototype of
the support rows, no gradient steps), amortised (TaNP-style set encoder, no
gradient steps), hybrid (the set encoder, then the base config's inner
steps, second order), distilled (the metric learner trained toward the
teacher's adapted query predictions: `distill.teacher`, `distill.weight`
0.8), distilled_amortised (the same with the amortised encoder as the
student and `distill.weight` 0.5: the `distilled` row of the tables before
2026-12-02; it stayed 1.7-2.2% behind its teacher on MovieLens-1M, the
metric student is within 1%, see docs/results.md).

Expect: `tools/compare.py` writes `OUT/table.md` and `OUT/results.json`;
the measured table is in docs/results.md.
"""

import importlib

VARIANTS = {
    "maml": {},
    "fomaml": {"meta.algorithm": "fomaml"},
    "metric": {"meta.algorithm": "metric"},
    "amortised": {"meta.algorithm": "amortised"},
    "hybrid": {"meta.algorithm": "hybrid"},
    "distilled": {"meta.algorithm": "metric", "distill.weight": 0.8},
    "distilled_amortised": {"meta.algorithm": "amortised"},
}

STUDENTS = ("distilled", "distilled_amortised")  # need a teacher


def get_config(arg: str = "maml"):
  variant, _, base = arg.partition("@")
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; variants:"
                     f" {', '.join(VARIANTS)}")
  c = importlib.import_module(f"configs.{base or 'default'}").get_config()
  for key, value in VARIANTS[variant].items():
    section, name = key.split(".")
    c[section][name] = value
  if variant in ("metric", "amortised", "hybrid") + STUDENTS:
    # The encoders read the plain models' support rows; the anchored form
    # (default.py's) has none yet.
    if variant in STUDENTS and c.model.anchor:
      # Its teacher, the anchored model, reads the item IDs: the student's
      # batches must carry them, so the student reads them too.
      c.model.item_id = True
    c.model.anchor = False
  return c


def get_runs(arg: str = "default"):
  """The runs for `tools/compare.py --spec=THIS_FILE[:BASE[@TEACHER]]`."""
  base, _, teacher = arg.partition("@")
  here = __file__
  runs = []
  for name in VARIANTS:
    if name in STUDENTS and not teacher:
      continue  # a student needs its teacher
    run = {"name": name, "config": f"{here}:{name}@{base}"}
    if name in STUDENTS:
      run["overrides"] = {"distill.teacher": teacher}
    runs.append(run)
  return runs
