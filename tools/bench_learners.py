"""Throughput and per-user adaptation latency of several learners, back to back.

Runs `metarec bench`'s measurement (`metarec_jax.bench.run`: the real
meta-step, sharded and compiled as in training) for each `meta.algorithm`
on one config in ONE process, one after the other, so the ratios are
comparable on a noisy machine. `--rounds=N` measures every learner N
times, the order reversed in every other round, and reports each
figure's median over the rounds and each ratio as the median of the
rounds' ratios (each round's learners ran minutes apart at most, so a
load that changes under the run moves a round's ratio less than one
learner's rate); the rounds' own tasks/s are in the JSON. FLOP counting is skipped (two compilations
per learner that the ratio does not need). Prints a markdown table (tasks/s,
ratio to the first algorithm, seconds per meta-step, median seconds to
adapt one user and predict its query, the meta-step's rate on batches
already on the devices and its ratio, the share of time the step waited
for the input pipeline) and, last, one JSON line.

    python tools/bench_learners.py --config=configs/melu_ref.py \\
        --algorithms=maml,metric,amortised,hybrid,fomaml --steps=10
    python tools/bench_learners.py --config=configs/melu_ref.py \\
        --algorithms=maml,metric,amortised --steps=60 --warmup=5 --rounds=3

`--config.KEY=VALUE` overrides apply to every algorithm.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from typing import Sequence

from absl import flags

from metarec_jax import bench, cli, cli_spec, config_io, toolkit
from metarec_jax.errors import InputError

log = logging.getLogger("metarec")


# The figures of each learner in the last (JSON) line.
_REPORTED = ("tasks_per_sec", "step_seconds", "adapt_seconds",
             "compile_seconds", "device_tasks_per_sec", "input_wait_fraction",
             "input_tasks_per_sec", "peak_gflops")
_RATIOS = ("x_first", "x_first_resident")  # `over_rounds`' medians


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


def over_rounds(rounds: list[dict[str, dict]]) -> dict[str, dict]:
  """One result per learner from several rounds of `measure`: each
  figure's median over the rounds, and `x_first` / `x_first_resident`,
  the medians of the rounds' ratios of tasks/s to the first learner's (a
  ratio within a round is of rates measured close together)."""
  names = list(rounds[0])
  out = {}
  for name in names:
    r = {k: statistics.median(rnd[name][k] for rnd in rounds)
         for k in _REPORTED if rounds[0][name].get(k) is not None}
    # s/step of the median rate, not a median of its own: an even number
    # of rounds averages two, and the two disagreed with the batch size.
    first = rounds[0][name]
    r["step_seconds"] = (first["tasks_per_sec"] * first["step_seconds"]
                         / r["tasks_per_sec"])
    for key, rate in (("x_first", "tasks_per_sec"),
                      ("x_first_resident", "device_tasks_per_sec")):
      r[key] = statistics.median(rnd[name][rate] / rnd[names[0]][rate]
                                 for rnd in rounds)
    out[name] = r
  return out


def table(results: dict[str, dict]) -> str:
  """Markdown rows: tasks/s, ratio to the first, step and adapt seconds
  (the ratios `over_rounds` gives where there, else of these rates)."""
  first = next(iter(results.values()))["tasks_per_sec"]
  resident = next(iter(results.values()))["device_tasks_per_sec"]
  lines = ["| learner | tasks/s | x first | s/step | adapt one user (ms) |"
           " tasks/s, resident batches | x first | input wait |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in results.items():
    lines.append(f"| {name} | {r['tasks_per_sec']:.0f} |"
                 f" {r.get('x_first', r['tasks_per_sec'] / first):.1f} |"
                 f" {r['step_seconds']:.3f} |"
                 f" {1000 * r['adapt_seconds']:.2f} |"
                 f" {r['device_tasks_per_sec']:.0f} |"
                 f" {r.get('x_first_resident', r['device_tasks_per_sec'] / resident):.1f} |"
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
  flags.DEFINE_integer("rounds", 1, "Times every learner is measured, the"
                       " order reversed in every other round (medians"
                       " reported).", lower_bound=1, flag_values=fv)
  if toolkit.help_asked(rest, __doc__, fv):
    return 0
  try:
    try:
      fv(["bench_learners.py"] + rest)
    except flags.Error as e:
      raise InputError(str(e).splitlines()[0]) from None
    algorithms = list(dict.fromkeys(fv.algorithms))
    if not algorithms:
      raise InputError("--algorithms: name at least one meta.algorithm")
    config = config_io.load_config_file(fv.config)
    config_io.apply_overrides(config,
                              cli_spec.split_config_args(overrides)[1])
    cli.check_config(config)  # every key's range, before anything runs
    cli.configure_logging()
    # As `metarec bench`: compile_seconds must be the real cost, not a
    # load from the persistent compilation cache.
    cli.setup_runtime(config, compilation_cache=False)
    rounds = []
    for i in range(fv.rounds):
      order = algorithms if i % 2 == 0 else algorithms[::-1]
      measured = measure(config, order, steps=fv.steps, warmup=fv.warmup)
      rounds.append({name: measured[name] for name in algorithms})
      if fv.rounds > 1:
        log.info("round %d of %d: %s", i + 1, fv.rounds, ", ".join(
            f"{name} {r['tasks_per_sec']:.0f} tasks/s"
            for name, r in measured.items()))
    results = rounds[0] if fv.rounds == 1 else over_rounds(rounds)
  except InputError as e:
    print(f"bench_learners.py: error: {e.message}", file=sys.stderr)
    return 2
  print(table(results), end="")
  out = {name: {k: r.get(k) for k in _REPORTED + _RATIOS if k in r}
         for name, r in results.items()}
  if fv.rounds > 1:
    out["rounds"] = [{name: r["tasks_per_sec"] for name, r in rnd.items()}
                     for rnd in rounds]
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
