"""The accelerator check: `metarec bench` over the list of issue 18, as JSON lines.

Run it through `tools/device_bench.sh` (which finds ml_collections first,
see DEVELOPERS.md). Each workload is one `metarec bench` process (the
real CLI; a workload that runs out of memory does not take the others
with it, and each starts with the whole device), printed as one JSON line:
`{"name": "melu-ref/4096/second/bfloat16", ...the bench JSON...}` or, for
a failed or skipped one, `{"name": ..., "error": "..."}` /
`{"name": ..., "skipped": "..."}`. The first line names the device, the
last one sums up. `utilization` in each line is against the matmul rate
of the run's compute dtype, measured in the same process
(`bench.peak_matmul_gflops`).

The list: melu-ref (`configs/melu_ref.py`) at 256, 4,096 and 65,536 tasks
per step, second and first order, float32 and bfloat16, and the
large-catalog workload (`configs/idemb_large.py`, float32 and bfloat16;
`mesh.model=1` where its 4 does not divide the accelerators) where the
checkout has it, before the 65,536 runs. Synthetic stores are built on the machine (once per data config, in
the temp folder `metarec bench` caches them in); nothing large travels.

`--learners`: issue 16's list instead: `tools/bench_learners.py` on
melu-ref, every learner back to back in one process (MAML first, the ratio
is to it), at 256 and 4,096 tasks per step, then at 256 in the reverse
order; one JSON line per run, `{"name": "learners/256", "maml": {...},
...}`, each learner's `tasks_per_sec` and `device_tasks_per_sec` (the step
alone on resident batches) beside its adaptation latency.

`--quick`: the same list at small sizes (16, 32 and 64 tasks, 2,000
users, 2 timed steps) for a CPU. The whole run stops starting workloads
when `--budget` seconds are spent (the rest print as skipped), so it ends
in time on any machine. For the test of this script:
`METAREC_DEVICE_BENCH_LIMIT=N` keeps only the first N workloads and
`METAREC_DEVICE_BENCH_ARGS="--flag=value ..."` appends flags to every
`metarec bench` (later flags win).

    tools/device_bench.sh            # on the GPU machine: < 8 minutes
    tools/device_bench.sh --quick    # on a CPU
    tools/device_bench.sh --learners --budget=300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
LARGE = os.path.join("configs", "idemb_large.py")

SIZES = (256, 4096, 65536)
QUICK_SIZES = (16, 32, 64)
# (warmup, timed) steps per size: large batches take long per step and
# their rate settles within a few.
STEPS = {256: (3, 20), 4096: (2, 10), 65536: (1, 4)}
QUICK_STEPS = (1, 2)
QUICK_DATA = ("--config.data.synthetic.num_users=2000",)
DTYPES = ("float32", "bfloat16")
LEARNERS = ("maml", "metric", "amortised", "hybrid", "fomaml")
LEARNER_SIZES = (256, 4096)


def workloads(quick: bool, large: bool, devices: int | None) -> list[dict]:
  """The list, in the order it runs: each `{"name", "args"}`; `devices`:
  the accelerators (None on a CPU, where each config splits the host
  into its own `train.cpu_devices`). The large-catalog runs come before
  melu-ref's largest size, so a tight budget skips the latter first."""
  sizes = QUICK_SIZES if quick else SIZES
  out = []
  for size in sizes:
    if large and size == sizes[-1]:
      out += _large(quick, devices)
    warmup, steps = QUICK_STEPS if quick else STEPS[size]
    for order in ("second", "first"):
      for dtype in DTYPES:
        out.append({
            "name": f"melu-ref/{size}/{order}/{dtype}",
            "args": ["--config=configs/melu_ref.py",
                     f"--config.train.tasks_per_step={size}",
                     f"--config.meta.second_order={order == 'second'}",
                     f"--config.model.compute_dtype={dtype}",
                     f"--warmup={warmup}", f"--steps={steps}",
                     *(QUICK_DATA if quick else ())]})
  extra = os.environ.get("METAREC_DEVICE_BENCH_ARGS", "").split()
  for w in out:
    w["args"] += ["--plain_flops=false", *extra]  # one lowering less
  return out


def learner_workloads(quick: bool) -> list[dict]:
  """Issue 16's list: `{"name", "args", "script"}`, one
  `tools/bench_learners.py` process each."""
  sizes = QUICK_SIZES[:2] if quick else LEARNER_SIZES
  warmup, steps = QUICK_STEPS if quick else (3, 20)
  runs = [(size, LEARNERS) for size in sizes]
  runs.append((sizes[0], LEARNERS[::-1]))
  extra = os.environ.get("METAREC_DEVICE_BENCH_ARGS", "").split()
  return [{"name": f"learners/{size}" + ("/reversed" if i == len(sizes)
                                         else ""),
           "script": os.path.join("tools", "bench_learners.py"),
           "args": ["--config=configs/melu_ref.py",
                    f"--algorithms={','.join(order)}",
                    f"--config.train.tasks_per_step={size}",
                    f"--warmup={warmup}", f"--steps={steps}",
                    *(QUICK_DATA if quick else ()), *extra]}
          for i, (size, order) in enumerate(runs)]


def _large(quick: bool, devices: int | None) -> list[dict]:
  """`configs/idemb_large.py` in float32 and bfloat16."""
  args = [f"--config={LARGE}",
          *(_fit_mesh(LARGE, devices) if devices else ()),
          # 4,095 items: a 4,096-row ID table, split over the model axis
          # once the split threshold is below it.
          *(("--config.data.synthetic.num_users=2000",
             "--config.data.synthetic.num_items=4095",
             "--config.mesh.shard_min_rows=1024",
             "--config.train.tasks_per_step=16") if quick else ()),
          *(("--warmup=1", "--steps=2") if quick else
            ("--warmup=2", "--steps=10"))]
  return [{"name": f"idemb-large/{dtype}",
           "args": [*args, f"--config.model.compute_dtype={dtype}"]}
          for dtype in DTYPES]


def _fit_mesh(config_file: str, devices: int) -> tuple[str, ...]:
  """`--config.mesh.model=1` where the config's model axis does not divide
  the devices of this machine (a 4-way sharded table on one GPU)."""
  from metarec_jax import config_io  # pylint: disable=g-import-not-at-top
  config = config_io.load_config_file(os.path.join(ROOT, config_file))
  model = int(config.mesh.model)
  if model > 1 and devices % model:
    return ("--config.mesh.model=1",)
  return ()


def device_info() -> dict:
  """Backend, device kind and count, from a short separate process (this
  one must not take the accelerator's memory from the bench processes)."""
  code = ("import json, jax; d = jax.devices(); print(json.dumps({"
          "'backend': jax.default_backend(), 'device_kind': d[0].device_kind,"
          " 'devices': len(d), 'jax': jax.__version__}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def run_one(workload: dict, timeout: float) -> dict:
  """One `metarec bench` process; its JSON (the last stdout line) or the
  error, named by the workload."""
  line = {"name": workload["name"]}
  command = ([workload["script"]] if "script" in workload
             else ["-m", "metarec_jax.cli", "bench"])
  try:
    out = subprocess.run(
        [sys.executable, *command, *workload["args"]],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {**line, "error": f"timed out after {timeout:.0f}s (--budget)"}
  lines = out.stdout.strip().splitlines()
  if out.returncode or not lines:
    errs = out.stderr.strip().splitlines() or ["(no output)"]
    return {**line, "error": f"exit {out.returncode}: {errs[-1]}"}
  return {**line, **json.loads(lines[-1])}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="small sizes, for a CPU")
  parser.add_argument("--learners", action="store_true",
                      help="issue 16's learners on melu-ref instead")
  parser.add_argument("--budget", type=float, default=None,
                      help="seconds after which no workload starts"
                      " (default 450, --quick 1800)")
  args = parser.parse_args(argv)
  if args.budget is not None and not 0 < args.budget < float("inf"):
    parser.error(f"argument --budget: {args.budget:g} is not > 0")
  budget = args.budget or (1800.0 if args.quick else 450.0)
  start = time.monotonic()
  info = device_info()
  print(json.dumps({"device_bench": {**info, "quick": args.quick,
                                     "learners": args.learners}}),
        flush=True)
  if args.learners:
    todo = learner_workloads(args.quick)
  else:
    todo = workloads(args.quick, os.path.exists(os.path.join(ROOT, LARGE)),
                     None if info["backend"] == "cpu" else info["devices"])
  limit = int(os.environ.get("METAREC_DEVICE_BENCH_LIMIT", "0") or 0)
  if limit > 0:
    todo = todo[:limit]
  counts = {"ran": 0, "failed": 0, "skipped": 0}
  for workload in todo:
    left = budget - (time.monotonic() - start)
    if left < 10:
      line = {"name": workload["name"],
              "skipped": f"--budget of {budget:.0f}s spent"}
      counts["skipped"] += 1
    else:
      line = run_one(workload, left)
      counts["failed" if "error" in line else "ran"] += 1
    print(json.dumps(line), flush=True)
  print(json.dumps({"device_bench_done": {
      **counts, "seconds": round(time.monotonic() - start, 1)}}), flush=True)
  return 1 if counts["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
