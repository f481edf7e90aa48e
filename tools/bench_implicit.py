"""Implicit feedback's meta-step against the rating workload, back to back.

Runs `metarec bench` (`metarec_jax.bench.run`) in one process on:

- `rating`: melu-ref as it is (support 64 ratings, query 10, MSE);
- `bce`, `bpr` (and `softmax` with `--losses`): melu-ref as implicit
  feedback (every synthetic interaction a positive), support 32 positives
  + 32 sampled negatives, query 10 positives + 10 negatives,

and prints each one's tasks/s and its ratio to `rating`. With `--rounds=N`
the variants run N times in turn (rating, bce, bpr, rating, ...) and each
keeps its best run, so a load change on a shared machine does not favour
one of them. The last line of stdout is one JSON object `{"rating":
{<bench JSON of the best run>}, "bce": {...}, ..., "runs": {"rating":
[tasks/s, ...], ...}, "ratios": {"bce": .., ...}}`.

Usage (from the repository root; the machine should be otherwise idle):

    python tools/bench_implicit.py --steps=20 --rounds=2
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from metarec_jax import bench, cli, config_io, toolkit  # noqa: E402  pylint: disable=g-import-not-at-top


def implicit_variant(config, loss: str):
  """melu-ref as implicit feedback: 32 positives + 32 negatives."""
  config.data.implicit.enabled = True
  config.data.implicit.threshold = 0.0  # every interaction is a positive
  config.data.implicit.negatives = 1
  config.data.max_support = 32
  config.data.buckets = (32,)
  config.model.loss = loss
  return config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=toolkit.positive_int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--losses", default="bce,bpr")
  parser.add_argument("--rounds", type=toolkit.positive_int, default=1)
  parser.add_argument("--config", default=os.path.join(ROOT, "configs",
                                                        "melu_ref.py"))
  args = parser.parse_args(argv)
  if args.warmup < 0:
    parser.error(f"argument --warmup: {args.warmup} is not >= 0")
  from metarec_jax.models.recommender import RANKING_LOSSES  # pylint: disable=g-import-not-at-top
  for loss in args.losses.split(","):  # before any workload runs
    if loss not in RANKING_LOSSES:
      parser.error(f"--losses: {loss!r} is not one of"
                   f" {', '.join(RANKING_LOSSES)}")
  cli.configure_logging()
  out = {}
  # Once, before JAX starts (every variant has the same tasks per step).
  cli.setup_runtime(config_io.load_config_file(args.config))
  names = ["rating"] + args.losses.split(",")
  runs = {name: [] for name in names}
  for _ in range(args.rounds):
    for name in names:
      config = config_io.load_config_file(args.config)
      if name != "rating":
        config = implicit_variant(config, name)
      result = bench.run(config, steps=args.steps, warmup=args.warmup)
      runs[name].append(result["tasks_per_sec"])
      if name not in out or (result["tasks_per_sec"]
                             > out[name]["tasks_per_sec"]):
        out[name] = result
      print(f"{name:8s} {result['tasks_per_sec']:9.1f} tasks/s", flush=True)
  base = out["rating"]["tasks_per_sec"]
  out["ratios"] = {k: out[k]["tasks_per_sec"] / base for k in names[1:]}
  out["runs"] = runs
  for k, r in out["ratios"].items():
    print(f"{k}: {r:.3f} of the rating workload's tasks/s")
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  toolkit.run(main)
