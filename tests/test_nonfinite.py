"""Never save a broken state: non-finite steps are skipped, counted and
stop the run at `train.max_nonfinite`, and what was saved stays finite.

The tests run `metarec train` on real orbax folders: as real processes,
except the runs that stop (in this process, `metarec_here`).
"""

import json
import os
import re

import numpy as np
import pytest

from cli_run import metarec_here
from conftest import config_path
from faults import QUIET, TINY, assert_finite, saved_state
from procs import checkpoint_steps, metarec
from metarec_jax import config_io
from metarec_jax.data import store as store_lib
from metarec_jax.data.convert import prepare


def _store(workdir, tmp_path):
  config = config_io.load_config_file(config_path("tiny"))
  path = os.path.join(workdir, "store")
  prepare.prepare(config.data, path)
  return path


def last_line_of_a_stopped_run(workdir, *flags) -> str:
  """The last stderr line of a tiny run that `flags` make stop (status 1),
  run in this process (`metarec_here`: the stop is the point, not the
  process)."""
  out = metarec_here("train", TINY, f"--workdir={workdir}", *QUIET, *flags)
  assert out.returncode == 1, out.stderr
  return out.stderr.strip().splitlines()[-1]


def test_non_finite_meta_gradients_are_skipped_and_counted(tmp_path,
                                                           monkeypatch):
  # NaN ratings: the store's own check refuses them when it opens, so the
  # guard behind it is tested with that check off (in this process).
  monkeypatch.setattr(store_lib, "_check_ratings", lambda store: None)
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  store = _store(workdir, tmp_path)
  ratings = np.load(os.path.join(store, "ratings.npy"), mmap_mode="r+")
  offsets = np.load(os.path.join(store, "offsets.npy"))
  for u in (5, 6, 7):  # three users' ratings become NaN
    ratings[offsets[u]:offsets[u + 1]] = np.nan
  ratings.flush()
  # One bucket: 20 steps of 16 tasks are more than an epoch, so the three
  # users are drawn.
  out = metarec_here("train", TINY, f"--workdir={workdir}", *QUIET,
                     "--config.train.num_steps=20",
                     "--config.log.every_steps=20")
  assert out.returncode == 0, out.stderr
  assert ("non-finite loss, meta-gradient or update; update skipped"
          in out.stderr)
  last = json.loads(open(os.path.join(workdir, "metrics.jsonl"))
                    .read().splitlines()[0])
  assert last["step"] == 20 and last["train/nonfinite_total"] >= 1
  state = saved_state(workdir, 20)
  assert_finite(state["params"])


def test_persistent_non_finite_gradients_stop_the_run_naming_the_step(
    tmp_path, monkeypatch):
  monkeypatch.setattr(store_lib, "_check_ratings", lambda store: None)
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  store = _store(workdir, tmp_path)
  ratings = np.load(os.path.join(store, "ratings.npy"), mmap_mode="r+")
  ratings[:] = np.inf
  ratings.flush()
  out = metarec_here("train", TINY, f"--workdir={workdir}", *QUIET,
                     "--config.train.max_nonfinite=3",
                     "--config.train.num_steps=20")
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert ("step 3: 3 consecutive steps with a non-finite loss, meta-gradient"
          " or update" in last)
  assert last.endswith("no checkpoint was saved")
  assert checkpoint_steps(workdir) == []


def test_an_infinite_learning_rate_saves_no_non_finite_state(tmp_path):
  """The gradients are finite, the updates are not: the state is guarded,
  nothing is saved while its updates are skipped (the step 2 checkpoint
  would hold the state of step 0 and a streak of 2), and a sane rate
  goes on in the same work directory.

  `train.lr=inf` is refused by the config check; 1e39 passes it (a finite
  Python float) and is infinite as the device's float32.
  """
  workdir = str(tmp_path / "run")
  last = last_line_of_a_stopped_run(workdir, "--config.train.lr=1e39",
                                    "--config.train.max_nonfinite=3",
                                    "--config.checkpoint.every_steps=2")
  assert ("step 3: 3 consecutive steps with a non-finite loss, meta-gradient"
          " or update" in last)
  assert last.endswith("no checkpoint was saved")
  assert checkpoint_steps(workdir) == []
  # The tiny config's own rate: the same work directory trains.
  lr = config_io.load_config_file(config_path("tiny")).train.lr
  out = metarec("train", f"--workdir={workdir}", f"--config.train.lr={lr}")
  assert out.returncode == 0, out.stderr
  assert checkpoint_steps(workdir) == [2, 4, 6]
  state = saved_state(workdir, 6)
  assert_finite(state)
  assert int(state["nonfinite_streak"]) == 0


# A plain network (the anchored one starts at zero) and a rate whose first
# updates are finite but huge: every later one overflows.
HUGE_UPDATES = ["--config.model.anchor=false", "--config.model.calibration=none",
                "--config.train.lr=1e6", "--config.train.num_steps=30"]


def test_no_checkpoint_is_saved_during_a_run_of_skipped_updates(tmp_path):
  """The regular saves at steps 5 and 10 held the state the streak began
  from, the streak with them: the error offered step 10 "to resume from
  with other settings", and every resume from it stopped again."""
  workdir = str(tmp_path / "run")
  last = last_line_of_a_stopped_run(workdir, *HUGE_UPDATES,
                                    "--config.checkpoint.every_steps=5")
  assert re.fullmatch(r"metarec train: error: step \d+: 10 consecutive steps"
                      r" with a non-finite loss, meta-gradient or update"
                      r" \(train.max_nonfinite=10\); no checkpoint was saved",
                      last), last
  assert checkpoint_steps(workdir) == []


def test_a_run_ending_in_skipped_updates_saves_its_last_step_and_a_resume_gets_its_own_tries(
    tmp_path):
  """Fewer skipped updates than train.max_nonfinite at the end: the run
  ends as trained (its last save is not dropped), and a resume starts its
  own count (the saved streak of 6 stopped a resume at its first step)."""
  workdir = str(tmp_path / "run")
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET,
                "--config.train.lr=1e39", "--config.train.max_nonfinite=100",
                "--config.checkpoint.every_steps=2")
  assert out.returncode == 0, out.stderr
  assert checkpoint_steps(workdir) == [6]
  assert int(saved_state(workdir, 6)["nonfinite_streak"]) == 6
  last = last_line_of_a_stopped_run(workdir, "--config.train.num_steps=12",
                                    "--config.train.lr=1e39",
                                    "--config.train.max_nonfinite=3",
                                    "--config.checkpoint.every_steps=2")
  assert last.startswith("metarec train: error: step 9: 3 consecutive"), last


@pytest.mark.parametrize("num_steps", [30, 3])
def test_a_stop_during_a_run_of_skipped_updates_saves_nothing(
    tmp_path, monkeypatch, caplog, num_steps):
  """A signal during a streak saved its step: the state the streak began
  from, which pushed a good checkpoint out of checkpoint.keep, against
  the promise that no state is saved while its updates are skipped
  (helper L). At the last step (3) it is saved, as without the signal
  (reviewer R2)."""
  import logging  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import guard as guard_lib  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = config_io.apply_overrides(
      config_io.load_config_file(config_path("tiny")), [
          ("train.lr", "1e39"), ("train.max_nonfinite", "100"),
          ("train.num_steps", str(num_steps)), ("checkpoint.every_steps", "2"),
          ("train.eval_every_steps", "-1"), ("log.every_steps", "1"),
          ("data.buckets", "(16,)")])
  real = guard_lib.NonFiniteGuard.check

  def check(self, step, streak, total):
    real(self, step, streak, total)
    if self.streak >= 3 and not getattr(self, "signalled", False):
      self.signalled = True
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(guard_lib.NonFiniteGuard, "check", check)
  workdir = str(tmp_path / "run")
  with caplog.at_level(logging.WARNING, logger="metarec"):
    summary = train_and_evaluate(config, workdir)
  assert summary["preempted"]
  stop, = [r.getMessage() for r in caplog.records
           if "stopped by a signal" in r.getMessage()]
  if num_steps == 3:
    assert "at step 3 (saved)" in stop, stop
    assert checkpoint_steps(workdir) == [3]
    return
  assert "update(s) were skipped as non-finite; a resume goes on from the" \
      " newest checkpoint, or from the start where there is none)" in stop
  assert checkpoint_steps(workdir) == []  # every update was skipped


def test_a_validation_diverging_after_training_names_the_step_and_rates(
    tmp_path):
  """It was an input error (status 2) blaming meta.inner_lr at its default,
  naming no step and no checkpoint."""
  workdir = str(tmp_path / "run")
  out = metarec_here("train", TINY, f"--workdir={workdir}", *HUGE_UPDATES,
                     "--config.train.eval_every_steps=3")
  assert out.returncode == 1, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert re.fullmatch(
      r"metarec train: error: step 3: validation: the adapted predictions of"
      r" [\d,]+ of [\d,]+ query ratings are not finite: the inner loop"
      r" diverges from the meta-parameters trained so far \(train.lr=1e\+06,"
      r" meta.inner_lr=0.1, meta.inner_steps=\d+\): lower train.lr or"
      r" meta.inner_lr; the newest checkpoint, of step 0, holds a finite"
      r" state to resume from with other settings \(where it diverges"
      r" again, start a new --workdir\)", last), last


def test_a_diverging_inner_loop_names_no_checkpoint_that_is_not_there(
    tmp_path):
  workdir = str(tmp_path / "run")
  last = last_line_of_a_stopped_run(workdir, "--config.meta.inner_lr=1e30",
                                    "--config.train.max_nonfinite=2",
                                    "--config.checkpoint.every_steps=0")
  # The step that stops it depends on the model (the anchored default's
  # network starts at zero, so its first steps can stay finite).
  step = re.fullmatch(r"metarec train: error: step (\d+): .*", last)
  assert step and int(step.group(1)) >= 2, last
  assert last == (f"metarec train: error: step {step.group(1)}: 2 consecutive"
                  " steps with a non-finite loss, meta-gradient or update"
                  " (train.max_nonfinite=2); no checkpoint was saved")
  assert checkpoint_steps(workdir) == []


def test_non_finite_validation_predictions_are_a_one_line_error(tmp_path):
  """An inner rate at which the adaptation of the validation users
  diverges (finite meta-parameters, NaN adapted predictions) ended in an
  IndexError inside the median map's fit: it is named for what it is."""
  workdir = str(tmp_path / "run")
  out = metarec_here("train", TINY, f"--workdir={workdir}",
                     "--config.meta.inner_lr=1e5")
  assert out.returncode == 2, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert re.fullmatch(
      r"metarec train: error: the adapted predictions of [\d,]+ of [\d,]+"
      r" query ratings are not finite: the inner loop diverges at these"
      r" settings \(meta.inner_lr=100000.0, meta.inner_steps=\d+\); lower"
      r" meta.inner_lr", last), last
  assert checkpoint_steps(workdir) == []


def test_a_resume_that_diverges_before_saving_leaves_config_json(tmp_path):
  """config.json was written as a resume started: after a resume whose
  `train.lr=1e39` diverged, a plain `metarec train --workdir=W` read that
  rate back ("resuming with a changed config: train.lr 0.002 -> 1e+39")
  and diverged again."""
  workdir = str(tmp_path / "run")
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET)
  assert out.returncode == 0, out.stderr
  path = os.path.join(workdir, "config.json")
  with open(path, "rb") as f:
    before = f.read()
  last = last_line_of_a_stopped_run(
      workdir, "--config.train.num_steps=12", "--config.train.lr=1e39",
      "--config.train.max_nonfinite=3", "--config.checkpoint.every_steps=100")
  assert "3 consecutive steps with a non-finite" in last
  assert checkpoint_steps(workdir) == [3, 6]
  with open(path, "rb") as f:
    assert f.read() == before
  # A resume that saves records its config.
  out = metarec_here("train", f"--workdir={workdir}",
                     "--config.train.num_steps=9")
  assert out.returncode == 0, out.stderr
  assert "train.lr" not in out.stderr
  assert config_io.read_workdir_config(workdir).train.num_steps == 9
