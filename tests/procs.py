"""Running `metarec` as real processes in tests."""

import os
import subprocess
import sys
import time

from conftest import ROOT, TEST_XLA_FLAGS


def env_with(devices: int | None = None, extra: dict | None = None) -> dict:
  env = dict(os.environ, **(extra or {}))
  env["XLA_FLAGS"] = TEST_XLA_FLAGS
  if devices:
    env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
  env["PYTHONUNBUFFERED"] = "1"
  return env


def metarec(*args, devices: int | None = None, timeout: int = 600):
  """Runs `metarec ARGS` to completion; returns the CompletedProcess."""
  return subprocess.run([sys.executable, "-m", "metarec_jax.cli", *args],
                        capture_output=True, text=True, cwd=ROOT,
                        timeout=timeout, env=env_with(devices))


def start(*args, devices: int | None = None, stderr_path=None,
          late_compile_s: float = 0, late_give_up_s: float = 0,
          bug_in_process: int | None = None,
          other_factors_in: int | str | None = None,
          shared_wait_s: float = 0):
  """Starts `metarec ARGS` in the background, with the test patches asked
  for (patched.py): `late_compile_s`: its first compilation starts that
  late (late_compile.py); `late_give_up_s`: its stop of a multi-process
  run (late_give_up.py); `bug_in_process`: that process of a joined run
  meets a bug (bug_in_process.py); `other_factors_in`: that process
  computes other item factors, or none with a `:none` suffix
  (other_factors.py); `shared_wait_s`: it looks that long for process 0's
  work directory (shared_wait.py). A 0 or None asks for no patch (the
  product's own behaviour, not a zero delay or wait)."""
  err = open(stderr_path, "w") if stderr_path else subprocess.PIPE
  patches = [f"{name}={value}" for name, value in (
      ("late_compile", late_compile_s or None),
      ("late_give_up", late_give_up_s or None),
      ("bug_in_process", bug_in_process),
      ("other_factors", other_factors_in),
      ("shared_wait", shared_wait_s or None)) if value is not None]
  program = ["-m", "metarec_jax.cli"]
  if patches:
    program = [os.path.join(os.path.dirname(__file__), "patched.py"),
               ",".join(patches)]
  return subprocess.Popen([sys.executable, *program, *args],
                          stdout=subprocess.PIPE, stderr=err, text=True,
                          cwd=ROOT, env=env_with(devices))


def run_together(commands, *, timeout: float) -> list[tuple[int, str]]:
  """Starts every `(args, start keywords)` of `commands` at once (the
  processes of one run) and waits for all; returns (exit status, stderr)
  of each. All are killed where one outlives `timeout`."""
  procs = [start(*args, **kw) for args, kw in commands]
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()
  return [(p.returncode, err) for p, (_, err) in zip(procs, outs)]


def wait_for(predicate, *, timeout: float = 300, interval: float = 0.005,
             proc=None):
  """Polls `predicate()` until true; fails if `proc` exits first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"process exited ({proc.returncode}) before the"
                           " condition held")
    time.sleep(interval)
  raise AssertionError("timed out")


def checkpoint_steps(workdir: str) -> list[int]:
  """Committed checkpoint steps (folders named by a bare integer)."""
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def tmp_checkpoints(workdir: str) -> list[str]:
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return [n for n in os.listdir(d) if "tmp" in n]
