"""Running the real `metarec` command line (for tests): in a subprocess,
or in this process (`metarec_here`)."""

import contextlib
import io
import json
import logging
import os
import subprocess
import sys

from conftest import ROOT
from procs import env_with


def metarec(*args, timeout=600, cwd=ROOT):
  path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  env = env_with(extra={"PYTHONPATH": os.pathsep.join([ROOT] + path)})
  return subprocess.run([sys.executable, "-m", "metarec_jax.cli", *args],
                        capture_output=True, text=True, cwd=cwd,
                        timeout=timeout, env=env)


def metarec_here(*args) -> subprocess.CompletedProcess:
  """The real command line run in this process, as `metarec` would exit.

  For the error paths (a bad flag, a bad file, a refused resume, a run
  stopped at `train.max_nonfinite`): there a process would spend most of
  its time starting up (importing JAX alone is about 2 s of CPU). Each such
  test keeps one case that runs as a real process, for what a user sees (a
  warning at start-up would break "one line"). The `metarec` logger's
  handlers are put back afterwards.
  """
  from metarec_jax import cli  # pylint: disable=g-import-not-at-top
  logger = logging.getLogger("metarec")
  saved = logger.handlers[:], logger.level, logger.propagate
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      status = cli.main(list(args))
  finally:
    logger.handlers[:], logger.level, logger.propagate = saved
  return subprocess.CompletedProcess(["metarec", *args], status,
                                     out.getvalue(), err.getvalue())


def last_json(out) -> dict:
  return json.loads(out.stdout.strip().splitlines()[-1])


def assert_one_line_error(out, message):
  """Exit status 2, no traceback, and the error as the one last line of
  stderr (log lines of the work done before may precede it)."""
  assert out.returncode == 2, (out.stdout, out.stderr)
  assert "Traceback" not in out.stderr
  lines = out.stderr.strip().splitlines()
  errors = [l for l in lines if ": error: " in l]
  assert errors == lines[-1:], out.stderr
  assert message in lines[-1], lines[-1]
