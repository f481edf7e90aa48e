"""Shared by the fault tests: the tiny run's flags, a finished run to
damage, and readers of what a run saved."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from conftest import config_path
from procs import checkpoint_steps, metarec

TINY = f"--config={config_path('tiny')}"
# No validation and one bucket: the fewest programs to compile per process.
QUIET = ["--config.train.eval_every_steps=-1", "--config.log.every_steps=5",
         "--config.data.buckets=(16,)"]


def saved_state(workdir: str, step: int) -> dict:
  """The `state` item of the checkpoint of `step`, as saved."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)


def assert_bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_finite(state):
  leaves = jax.tree.leaves(state)
  assert leaves
  for leaf in leaves:
    assert np.isfinite(np.asarray(leaf)).all()


def train_finished_run(workdir: str) -> str:
  """A finished 6-step tiny run in `workdir`, checkpoints at 3 and 6."""
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET)
  assert out.returncode == 0, out.stderr
  assert checkpoint_steps(workdir) == [3, 6]
  return workdir


def copy_run(src: str, tmp_path) -> str:
  """A copy of the work directory `src` in `tmp_path`/run, to damage."""
  dst = str(tmp_path / "run")
  shutil.copytree(src, dst)
  return dst
