"""The meta-learning family and its baselines on one base config.

Every variant changes only the algorithm (or the model) of a base config, so
the comparison holds the data, the protocol, the inner steps and the budget
fixed. `ARG` is `VARIANT[@BASE]`; BASE is a module of `configs/` (default
`default`, the synthetic quickstart).

Run the whole comparison (the real table is on MovieLens-1M):

    python tools/compare.py --spec=configs/algorithms.py:melu_ml1m \\
        --out=runs/algorithms --seeds=0,1,2

One variant alone:

    metarec train --config=configs/algorithms.py:reptile@melu_ml1m \\
        --workdir=runs/reptile

Variants: maml (second order), fomaml, reptile, metasgd, mamlpp (learned
per-step rates and a multi-step loss), anil (MAML adapting only MeLU's
output layer), pretrain (no meta-learning: plain training, then per-user
fine-tuning with the same inner steps), idemb (item IDs + one meta-learned
user embedding, dot product), idemb_mlp (the same with an MLP interaction).

Expect: `tools/compare.py` writes `OUT/table.md` (MAE and nDCG@3 per
scenario, the two model-free baselines, training minutes) and
`OUT/results.json`. A variant's config inherits every other key from BASE,
so an override of `meta.inner_steps` on `mamlpp` needs a matching
`meta.msl_weights`.
"""

import importlib

VARIANTS = {
    "maml": {},
    "fomaml": {"meta.algorithm": "fomaml"},
    "reptile": {"meta.algorithm": "reptile"},
    "metasgd": {"meta.algorithm": "metasgd"},
    "mamlpp": {"meta.algorithm": "mamlpp"},  # msl_weights set below
    "anil": {"meta.adapt": ("^decision/out/",)},
    "pretrain": {"meta.algorithm": "pretrain"},
    "idemb": {"model.name": "idemb"},
    "idemb_mlp": {"model.name": "idemb", "model.interaction": "mlp"},
}


def msl_ramp(steps: int) -> tuple[float, ...]:
  """MAML++'s multi-step loss weights, fixed: a linear ramp summing to 1.

  The paper anneals from uniform weights to the last step only; a fixed
  ramp keeps every step's loss in play while favouring the final one.
  """
  total = steps * (steps + 1) / 2
  return tuple((k + 1) / total for k in range(steps))


def get_config(arg: str = "maml"):
  variant, _, base = arg.partition("@")
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; variants:"
                     f" {', '.join(VARIANTS)}")
  c = importlib.import_module(f"configs.{base or 'default'}").get_config()
  for key, value in VARIANTS[variant].items():
    section, name = key.split(".")
    c[section][name] = value
  if variant == "mamlpp":
    c.meta.msl_weights = msl_ramp(int(c.meta.inner_steps))
  return c


def get_runs(base: str = "default"):
  """The comparison's runs for `tools/compare.py --spec=THIS_FILE[:BASE]`."""
  here = __file__
  return [{"name": name, "config": f"{here}:{name}@{base}"}
          for name in VARIANTS]
