"""`tools/device_bench.sh --quick` end to end on a one-workload list."""

import json
import os
import subprocess
import sys

from conftest import ROOT


# The smallest meta-step that still runs the whole path.
SMALLEST = ("--config.meta.inner_steps=1 --config.model.embed_dim=4"
            " --config.model.hidden=(8,) --config.data.max_support=8"
            " --config.data.buckets=(8,) --config.data.synthetic."
            "num_users=300 --warmup=1 --steps=1")


def _first_workload(*flags: str, extra: str = "") -> list[dict]:
  """`tools/device_bench.sh --quick FLAGS` on its first workload, at the
  smallest size: its JSON lines."""
  env = dict(os.environ, PYTHON=sys.executable,
             METAREC_DEVICE_BENCH_LIMIT="1",
             METAREC_DEVICE_BENCH_ARGS=f"{extra} {SMALLEST}")
  out = subprocess.run([os.path.join(ROOT, "tools", "device_bench.sh"),
                        "--quick", *flags], capture_output=True, text=True,
                       env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return [json.loads(line) for line in out.stdout.strip().splitlines()]


def test_quick_device_bench_prints_json_lines():
  head, run, done = _first_workload()
  assert head["device_bench"]["quick"] is True
  assert run["name"] == "melu-ref/16/second/float32"
  assert run["tasks_per_sec"] > 0 and 0 < run["utilization"]
  assert run["workload"]["compute_dtype"] == "float32"
  assert run["workload"]["tasks_per_step"] == 16
  assert done["device_bench_done"]["ran"] == 1


def test_quick_learners_bench_compares_learners_to_maml():
  """`--learners`: issue 16's list, one bench_learners.py process per run,
  each learner's rate on resident batches beside its pipeline-fed one."""
  head, run, done = _first_workload("--learners",
                                    extra="--algorithms=maml,metric")
  assert head["device_bench"]["learners"] is True
  assert run["name"] == "learners/16"
  assert list(run) == ["name", "maml", "metric"]
  for learner in ("maml", "metric"):
    assert run[learner]["tasks_per_sec"] > 0
    assert run[learner]["device_tasks_per_sec"] > 0
    assert run[learner]["adapt_seconds"] > 0
  assert done["device_bench_done"]["ran"] == 1
