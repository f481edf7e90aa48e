"""Where the meta-step's time goes: XLA ops by total time, from a trace.

Usage:

    python tools/profile_step.py --config=configs/melu_ref.py [--config.KEY=VALUE ...] [--steps=5] [--top=30]

Runs the config's compiled meta-step a few times under `jax.profiler`,
reads the Perfetto trace back and prints the XLA operations (fusions, dots,
collectives) by total time summed over device threads, grouped into
dot / collective / other, with their HLO shapes for the top ones, and
the wall time per step of the same steps.

An op's time is from its start to its end on its thread, so where the
device threads outnumber the free cores it includes the time the op
waited for one: the sum over threads can then exceed wall time x cores,
and an op that gets cheaper may only wait less. Judge a change by wall
time (`tools/bench_learners.py`, `metarec bench`), back to back; use the
op times to see where to look.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SKIP = re.compile(r"ThunkExecutor|Pjit|Execute|Wait|Rendezvous|^\$|^while|"
                   r"^call|^conditional|Thunk")


def main(argv):
  from metarec_jax import cli, cli_spec, config_io, toolkit  # pylint: disable=g-import-not-at-top
  if toolkit.help_asked(argv, __doc__):
    return 0
  steps, top = 5, 30
  rest = []
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  for arg in argv:
    name, _, text = arg.partition("=")
    if name in ("--steps", "--top"):
      if not text.isdigit() or int(text) < 1:
        raise InputError(f"{arg}: a positive integer")
      steps, top = (int(text), top) if name == "--steps" else (steps,
                                                               int(text))
    else:
      rest.append(arg)
  config_file, overrides, left = cli_spec.split_config_args(rest)
  if left:
    raise InputError(f"unknown argument {left[0]!r}; usage: profile_step.py"
                     " --config=FILE [--config.KEY=VALUE ...] [--steps=N]"
                     " [--top=N]")
  if not config_file:  # (it was an AttributeError traceback)
    raise InputError("--config=FILE is required; usage: profile_step.py"
                     " --config=FILE [--config.KEY=VALUE ...] [--steps=N]"
                     " [--top=N]")
  config = config_io.apply_overrides(config_io.load_config_file(config_file),
                                     overrides)
  cli.setup_runtime(config)
  import jax  # pylint: disable=g-import-not-at-top
  from metarec_jax import bench  # pylint: disable=g-import-not-at-top
  from metarec_jax.train.trainer import Trainer  # pylint: disable=g-import-not-at-top

  trainer = Trainer(config, bench.default_workdir(config))
  state = trainer.init(trainer.rng())
  batches = [jax.device_put(trainer.sampler.batch(s), trainer.task_sharding)
             for s in range(steps + 1)]
  state, m = trainer.step(state, batches[0], trainer.hyper)
  jax.block_until_ready(m)
  trace_dir = tempfile.mkdtemp(prefix="metarec-trace-")
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  start = time.perf_counter()
  for b in batches[1:]:
    state, m = trainer.step(state, b, trainer.hyper)
  jax.block_until_ready(m)
  wall = time.perf_counter() - start
  jax.profiler.stop_trace()
  trace = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz",
                           recursive=True))[-1]
  events = json.load(gzip.open(trace))["traceEvents"]
  shutil.rmtree(trace_dir, ignore_errors=True)
  total, count = collections.Counter(), collections.Counter()
  groups = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or _SKIP.search(e["name"]):
      continue
    name, dur = e["name"], e.get("dur", 0)
    total[name] += dur
    count[name] += 1
    kind = ("dot" if re.match(r"(dot|ynn|xnn|onednn)", name) else
            "collective" if re.search(r"all-reduce|all-gather|psum", name)
            else "other")
    groups[kind] += dur
  hlo = trainer.step.executables[next(iter(trainer.step.executables))].as_text()
  shapes = {}
  for line in hlo.splitlines():
    match = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) ", line)
    if match:
      shapes.setdefault(match.group(1), match.group(2))
  print(f"wall {wall * 1e3 / steps:.2f} ms per step under the profiler"
        f" ({steps} steps, {os.cpu_count()} host cores)")
  print(f"ms per step, summed over device threads ({steps} steps):")
  for kind, dur in groups.most_common():
    print(f"  {kind:<10} {dur / 1e3 / steps:8.2f}")
  for name, dur in total.most_common(top):
    print(f"{dur / 1e3 / steps:8.2f} ms  x{count[name] // steps:<4d} {name:<40}"
          f" {shapes.get(name, '')}")


if __name__ == "__main__":
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  toolkit.run(lambda: main(sys.argv[1:]))
