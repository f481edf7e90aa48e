"""Kill it at any moment and lose nothing: resume, preemption, corruption.

Every test runs `metarec train` as real processes on real orbax folders.
"""

import json
import os
import re
import shutil
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import config_path
from procs import (checkpoint_steps, metarec, start, tmp_checkpoints,
                   wait_for)
from metarec_jax import config_io
from metarec_jax.data.convert import prepare

TINY = f"--config={config_path('tiny')}"
# No validation and one bucket: the fewest programs to compile per process.
QUIET = ["--config.train.eval_every_steps=-1", "--config.log.every_steps=5",
         "--config.data.buckets=(16,)"]


def saved_state(workdir: str, step: int) -> dict:
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)


def assert_bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 6-step tiny run with checkpoints at steps 3 and 6."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET)
  assert out.returncode == 0, out.stderr
  assert checkpoint_steps(workdir) == [3, 6]
  return workdir


def copy_run(src, tmp_path):
  dst = str(tmp_path / "run")
  shutil.copytree(src, dst)
  return dst


def test_kill9_and_resume_is_bitwise_identical(tmp_path):
  args = [TINY, "--config.train.num_steps=60",
          "--config.checkpoint.every_steps=4", *QUIET]
  straight = str(tmp_path / "straight")
  out = metarec("train", *args, f"--workdir={straight}")
  assert out.returncode == 0, out.stderr

  killed = str(tmp_path / "killed")
  proc = start("train", *args, f"--workdir={killed}")
  wait_for(lambda: any(s >= 20 for s in checkpoint_steps(killed)), proc=proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert max(checkpoint_steps(killed)) < 60
  out = metarec("train", f"--workdir={killed}")  # config from the workdir
  assert out.returncode == 0, out.stderr
  assert "resumed from the checkpoint of step" in out.stderr
  assert_bitwise_equal(saved_state(straight, 60), saved_state(killed, 60))
  # The restart compiled nothing: its warm-up programs came from the
  # persistent compilation cache that the earlier processes filled.
  hits = re.findall(r"compiled, (\d+) from the persistent"
                    r" compilation cache\)", out.stderr)
  assert len(hits) == 1 and int(hits[0]) > 0, out.stderr


def test_sigterm_saves_the_step_reached_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  args = [TINY, "--config.train.num_steps=400",
          "--config.checkpoint.every_steps=50", *QUIET]
  proc = start("train", *args, f"--workdir={workdir}")
  wait_for(lambda: checkpoint_steps(workdir), proc=proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  line = [l for l in err.splitlines() if "stopped by a signal at step" in l]
  assert line and "metarec train --workdir=" in line[0]
  step = int(line[0].split("at step ")[1].split()[0])
  assert step in checkpoint_steps(workdir) and step < 400
  out = metarec("train", f"--workdir={workdir}",
                "--config.train.num_steps=" + str(step + 3))
  assert out.returncode == 0, out.stderr
  assert f"resumed from the checkpoint of step {step}" in out.stderr
  assert step + 3 in checkpoint_steps(workdir)


def test_preemption_exit_status_is_configurable(tmp_path):
  workdir = str(tmp_path / "run")
  proc = start("train", TINY, f"--workdir={workdir}", *QUIET,
               "--config.train.num_steps=400",
               "--config.checkpoint.every_steps=50",
               "--config.train.preempt_exit_code=75")
  wait_for(lambda: checkpoint_steps(workdir), proc=proc)
  proc.send_signal(signal.SIGINT)
  proc.communicate(timeout=120)
  assert proc.returncode == 75


def test_kill9_during_a_save_resumes_from_the_previous_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  # A large zip embedding table makes each save take a while.
  args = [TINY, f"--workdir={workdir}", *QUIET,
          "--config.data.synthetic.zip_vocab=1500000",
          "--config.model.embed_dim=16", "--config.train.num_steps=40",
          "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=2"]
  proc = start("train", *args)
  wait_for(lambda: checkpoint_steps(workdir), proc=proc, interval=0.01)
  first = checkpoint_steps(workdir)[-1]
  seen = wait_for(lambda: [n for n in tmp_checkpoints(workdir)
                           if not n.startswith(str(first) + ".")],
                  proc=proc, interval=0.001)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  complete = checkpoint_steps(workdir)
  in_flight = int(seen[0].split(".")[0])
  assert in_flight not in complete, "the kill came after the save committed"
  out = metarec("train", f"--workdir={workdir}",
                "--config.train.num_steps=" + str(max(complete) + 2))
  assert out.returncode == 0, out.stderr
  assert (f"resumed from the checkpoint of step {max(complete)}"
          in out.stderr)
  assert not tmp_checkpoints(workdir)  # the half-written folder is gone


def _data_files(folder):
  """The array data files of an orbax (OCDBT) item folder."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs
           if os.path.basename(r) == "d"]
  assert files
  return files


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_corrupt_newest_checkpoint_falls_back_with_a_warning(
    finished_run, tmp_path, damage):
  workdir = copy_run(finished_run, tmp_path)
  for victim in _data_files(os.path.join(workdir, "checkpoints", "6",
                                         "state")):
    if damage == "truncate":
      with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 3)
    else:
      os.remove(victim)
  out = metarec("train", f"--workdir={workdir}", "--config.train.num_steps=8")
  assert out.returncode == 0, out.stderr
  warning = [l for l in out.stderr.splitlines() if "cannot be read" in l]
  assert warning, out.stderr
  assert "step 6" in warning[0] and "step 3" in warning[0]
  assert "resumed from the checkpoint of step 3" in out.stderr
  assert 8 in checkpoint_steps(workdir)


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(
    finished_run, tmp_path):
  workdir = copy_run(finished_run, tmp_path)
  for step in (3, 6):
    folder = os.path.join(workdir, "checkpoints", str(step), "state")
    for victim in _data_files(folder):
      with open(victim, "r+b") as f:
        f.truncate(10)
  out = metarec("train", f"--workdir={workdir}", "--config.train.num_steps=8")
  assert out.returncode == 1
  assert "no usable checkpoint" in out.stderr
  assert "Traceback" not in out.stderr
  assert checkpoint_steps(workdir) == [3, 6]


def _store(workdir, tmp_path):
  config = config_io.load_config_file(config_path("tiny"))
  path = os.path.join(workdir, "store")
  prepare.prepare(config.data, path)
  return path


def test_non_finite_meta_gradients_are_skipped_and_counted(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  store = _store(workdir, tmp_path)
  ratings = np.load(os.path.join(store, "ratings.npy"), mmap_mode="r+")
  offsets = np.load(os.path.join(store, "offsets.npy"))
  for u in (5, 6, 7):  # three users' ratings become NaN
    ratings[offsets[u]:offsets[u + 1]] = np.nan
  ratings.flush()
  out = metarec("train", TINY, f"--workdir={workdir}",
                "--config.train.num_steps=60", "--config.log.every_steps=60",
                "--config.train.eval_every_steps=0")
  assert out.returncode == 0, out.stderr
  assert ("non-finite loss, meta-gradient or update; update skipped"
          in out.stderr)
  last = json.loads(open(os.path.join(workdir, "metrics.jsonl"))
                    .read().splitlines()[0])
  assert last["step"] == 60 and last["train/nonfinite_total"] >= 1
  state = saved_state(workdir, 60)
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves(state["params"]))


def test_persistent_non_finite_gradients_stop_the_run_naming_the_step(
    tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  store = _store(workdir, tmp_path)
  ratings = np.load(os.path.join(store, "ratings.npy"), mmap_mode="r+")
  ratings[:] = np.inf
  ratings.flush()
  out = metarec("train", TINY, f"--workdir={workdir}",
                "--config.train.max_nonfinite=3",
                "--config.train.num_steps=20")
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert ("step 3: 3 consecutive steps with a non-finite loss, meta-gradient"
          " or update" in last)
  assert last.endswith("no checkpoint was saved")
  assert checkpoint_steps(workdir) == []


def assert_finite(state):
  leaves = jax.tree.leaves(state)
  assert leaves
  for leaf in leaves:
    assert np.isfinite(np.asarray(leaf)).all()


def test_an_infinite_learning_rate_saves_no_non_finite_state(
    finished_run, tmp_path):
  """The gradients are finite, the updates are not: the state is guarded,
  what was saved is finite, and a resume with a sane rate goes on.

  `train.lr=inf` is refused by the config check; 1e39 passes it (a finite
  Python float) and is infinite as the device's float32.
  """
  workdir = str(tmp_path / "run")
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET,
                "--config.train.lr=1e39", "--config.train.max_nonfinite=3",
                "--config.checkpoint.every_steps=2")
  assert out.returncode == 1, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert ("step 3: 3 consecutive steps with a non-finite loss, meta-gradient"
          " or update" in last)
  assert last.endswith("the newest checkpoint, of step 2, holds a finite"
                       " state to resume from with other settings")
  assert checkpoint_steps(workdir) == [2]
  assert_finite(saved_state(workdir, 2))
  # The finished run's settings: its compiled step comes from the cache.
  lr = config_io.load_config_file(config_path("tiny")).train.lr
  out = metarec("train", f"--workdir={workdir}", f"--config.train.lr={lr}")
  assert out.returncode == 0, out.stderr
  assert "resumed from the checkpoint of step 2" in out.stderr
  assert checkpoint_steps(workdir) == [2, 4, 6]
  state = saved_state(workdir, 6)
  assert_finite(state)
  assert int(state["nonfinite_streak"]) == 0
  assert int(state["nonfinite_total"]) == 2  # steps 1 and 2 were skipped


def test_a_diverging_inner_loop_names_no_checkpoint_that_is_not_there(
    tmp_path):
  workdir = str(tmp_path / "run")
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET,
                "--config.meta.inner_lr=1e30", "--config.train.max_nonfinite=2",
                "--config.checkpoint.every_steps=0")
  assert out.returncode == 1, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  # The step that stops it depends on the model (the anchored default's
  # gated network starts at zero, so its first steps can stay finite).
  step = re.fullmatch(r"metarec train: error: step (\d+): .*", last)
  assert step and int(step.group(1)) >= 2, last
  assert last == (f"metarec train: error: step {step.group(1)}: 2 consecutive"
                  " steps with a non-finite loss, meta-gradient or update"
                  " (train.max_nonfinite=2); no checkpoint was saved")
  assert checkpoint_steps(workdir) == []


def test_shape_changing_config_on_resume_is_refused(finished_run, tmp_path):
  workdir = copy_run(finished_run, tmp_path)
  out = metarec("train", f"--workdir={workdir}", "--config.model.hidden=(8,8)",
                "--config.train.num_steps=8")
  assert out.returncode == 2, out.stderr
  assert "cannot resume the checkpoint of step 6" in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("metarec train: error: cannot resume")
  assert "model.hidden" in last and "decision/fc1" in last
  assert checkpoint_steps(workdir) == [3, 6]


def test_harmless_config_change_on_resume_is_accepted_and_logged(
    finished_run, tmp_path):
  workdir = copy_run(finished_run, tmp_path)
  out = metarec("train", f"--workdir={workdir}", "--config.train.num_steps=8",
                "--config.log.every_steps=1")
  assert out.returncode == 0, out.stderr
  assert "changed config: train.num_steps 6 -> 8" in out.stderr
  assert "changed config: log.every_steps" in out.stderr
  assert 8 in checkpoint_steps(workdir)


def test_restore_across_device_counts(tmp_path):
  """Saved on 4 devices, resumed on 1, then saved on 1, resumed on 4."""
  workdir = str(tmp_path / "run")
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET, devices=4)
  assert out.returncode == 0, out.stderr
  for steps, devices, resumed in ((9, 1, 6), (12, 4, 9)):
    out = metarec("train", f"--workdir={workdir}",
                  f"--config.train.num_steps={steps}", devices=devices)
    assert out.returncode == 0, out.stderr
    assert f"resumed from the checkpoint of step {resumed}" in out.stderr
    assert steps in checkpoint_steps(workdir)
