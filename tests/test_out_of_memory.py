"""Memory that runs out is one line naming the keys to lower, exit status 1.

A melu-ref meta-step of 65,536 tasks in float32 asks an 80 GB GPU for
41 GiB more than it has; before, `metarec bench` and `train` ended in a
forty-line traceback whose last line alone said why.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from cli_run import metarec_here
from metarec_jax import errors, interrupts


def _real_allocation_failure() -> Exception:
  """The error XLA raises for a buffer no machine has (400 TB)."""
  try:
    jnp.zeros((10**14,), jnp.float32).block_until_ready()
  except Exception as e:  # pylint: disable=broad-except
    return e
  raise AssertionError("a 400 TB buffer was allocated")


def test_an_allocation_xla_refuses_is_one_line_with_the_keys_to_lower():
  said = errors.error_line(_real_allocation_failure())
  assert said is not None
  line, status = said
  assert status == 1
  assert line.startswith("out of memory (")
  assert "Out of memory" in line and "400000000000000 bytes" in line
  assert "train.chunk_tasks" in line and "eval.batch_tasks" in line
  assert "--chunk_users (export)" in line
  assert "\n" not in line


def test_each_command_is_told_what_it_can_lower():
  """`data synth --num_items=100000000000` ran out of memory and was told
  to lower train.chunk_tasks, eval.batch_tasks and --chunk_users."""
  failure = MemoryError("Unable to allocate 745. GiB")
  hints = {"train": "train.tasks_per_step", "bench": "train.chunk_tasks",
           "eval": "eval.batch_tasks", "export": "--chunk_users",
           "serve": "--max_batch", "data": "--num_items (data synth)"}
  for command, key in hints.items():
    line, status = errors.error_line(failure, command)
    assert status == 1 and key in line, (command, line)
  assert "eval.batch_tasks" not in errors.error_line(failure, "data")[0]


def test_numpy_memory_error_is_one_line_too():
  with pytest.raises(MemoryError) as caught:
    np.empty((10**18,), np.float32)
  line, status = errors.error_line(caught.value)
  assert status == 1 and line.startswith("out of memory (Unable to allocate")


def test_python_memory_error_without_a_message_is_named_by_its_type():
  line, status = errors.error_line(MemoryError())  # a bytearray's
  assert status == 1 and line.startswith("out of memory (MemoryError):")


def test_other_runtime_errors_stay_bugs_with_their_traceback():
  class JaxRuntimeError(RuntimeError):
    pass

  assert errors.error_line(JaxRuntimeError("INTERNAL: a kernel failed")) is None
  assert errors.error_line(RuntimeError("Out of memory")) is None


def test_bench_that_runs_out_of_memory_says_so_in_one_line(monkeypatch):
  from metarec_jax import bench  # pylint: disable=g-import-not-at-top
  failure = _real_allocation_failure()

  def run(*args, **kwargs):
    raise failure

  monkeypatch.setattr(bench, "run", run)
  monkeypatch.setattr(interrupts, "_stopped", {"signum": None})
  out = metarec_here("bench", "--config=configs/tiny.py", "--steps=1")
  # ... and the process will end at once (`end_program`), not wait for
  # device threads stuck in the failed step's collective.
  assert interrupts._stopped.get("at_once")  # pylint: disable=protected-access
  assert out.returncode == 1, out.stderr
  assert "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("metarec bench: error: out of memory ("), last
  assert "train.tasks_per_step" in last


def test_a_program_ended_at_once_does_not_wait_for_stuck_threads(tmp_path):
  """After memory ran out in one device's part of a step, the other
  devices' threads waited in the collective, and the process ended 60 s
  after its error line, aborted by XLA (exit 134)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import ROOT  # pylint: disable=g-import-not-at-top
  script = tmp_path / "program.py"
  script.write_text(
      "import threading, time\n"
      "from metarec_jax import interrupts\n"
      "threading.Thread(target=time.sleep, args=(600,)).start()  # stuck\n"
      "print('error line', end='')\n"
      "interrupts.end_at_once()\n"
      "interrupts.end_program(1)\n")
  out = subprocess.run([sys.executable, str(script)], capture_output=True,
                       text=True, timeout=60, env={"PYTHONPATH": ROOT})
  assert out.returncode == 1 and out.stdout == "error line"
