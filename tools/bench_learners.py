"""Throughput and per-user adaptation latency of several learners, back to back.

Runs `metarec bench`'s measurement (`metarec_jax.bench.run`: the real
meta-step, sharded and compiled as in training) for each `meta.algorithm`
on one config in ONE process, one after the other, so the ratios are
comparable on a noisy machine; FLOP counting is skipped (two compilations
per learner that the ratio does not need). Prints a markdown table (tasks/s,
ratio to the first algorithm, seconds per meta-step, median seconds to
adapt one user and predict its query, the meta-step's rate on batches
already on the devices and its ratio, the share of time the step waited
for the input pipeline) and, last, one JSON line.

    python tools/bench_learners.py --config=configs/melu_ref.py \\
        --algorithms=maml,metric,amortised,hybrid,fomaml --steps=10

`--config.KEY=VALUE` overrides apply to every algorithm.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Sequence

from absl import flags

from metarec_jax import bench, cli, config_io, toolkit
from metarec_jax.errors import InputError

log = logging.getLogger("metarec")


# The figures of each learner in the last (JSON) line.
_REPORTED = ("tasks_per_sec", "step_seconds", "adapt_seconds",
             "compile_seconds", "device_tasks_per_sec", "input_wait_fraction",
             "input_tasks_per_sec", "peak_gflops")


def measure(config, algorithms: Sequence[str], *, steps: int,
            warmup: int) -> dict[str, dict]:
  """`{algorithm: bench.run(...) result}` in the given order."""
  out = {}
  for algorithm in algorithms:
    c = config_io.from_dict(config_io.to_dict(config))
    c.meta.algorithm = algorithm
    out[algorithm] = r = bench.run(c, steps=steps, warmup=warmup,
                                   count_flops=False)
    log.info("%s: %.1f tasks/s, %.4f s/step, adapt one user %.2f ms",
             algorithm, r["tasks_per_sec"], r["step_seconds"],
             1000 * r["adapt_seconds"])
  return out


def table(results: dict[str, dict]) -> str:
  """Markdown rows: tasks/s, ratio to the first, step and adapt seconds."""
  first = next(iter(results.values()))["tasks_per_sec"]
  resident = next(iter(results.values()))["device_tasks_per_sec"]
  lines = ["| learner | tasks/s | x first | s/step | adapt one user (ms) |"
           " tasks/s, resident batches | x first | input wait |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in results.items():
    lines.append(f"| {name} | {r['tasks_per_sec']:.0f} |"
                 f" {r['tasks_per_sec'] / first:.1f} |"
                 f" {r['step_seconds']:.3f} |"
                 f" {1000 * r['adapt_seconds']:.2f} |"
                 f" {r['device_tasks_per_sec']:.0f} |"
                 f" {r['device_tasks_per_sec'] / resident:.1f} |"
                 f" {r['input_wait_fraction']:.0%} |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  args = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in args if a.startswith("--config.")]
  rest = [a for a in args if not a.startswith("--config.")]
  fv = flags.FlagValues()
  flags.DEFINE_string("config", "configs/melu_ref.py", "Config file.",
                      flag_values=fv)
  flags.DEFINE_list("algorithms", ["maml", "metric", "amortised", "hybrid"],
                    "meta.algorithm values, in order (ratios are to the"
                    " first).", flag_values=fv)
  flags.DEFINE_integer("steps", 10, "Timed meta-steps per learner.",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("warmup", 2, "Untimed meta-steps first.",
                       lower_bound=0, flag_values=fv)
  if toolkit.help_asked(rest, __doc__, fv):
    return 0
  try:
    try:
      fv(["bench_learners.py"] + rest)
    except flags.Error as e:
      raise InputError(str(e).splitlines()[0]) from None
    config = config_io.load_config_file(fv.config)
    config_io.apply_overrides(
        config, [tuple(a[len("--config."):].split("=", 1)) for a in overrides])
    cli.configure_logging()
    cli.setup_runtime(config)
    results = measure(config, fv.algorithms, steps=fv.steps,
                      warmup=fv.warmup)
  except InputError as e:
    print(f"bench_learners.py: error: {e.message}", file=sys.stderr)
    return 2
  print(table(results), end="")
  print(json.dumps({name: {k: r[k] for k in _REPORTED}
                    for name, r in results.items()}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
