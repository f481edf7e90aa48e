"""Resuming a finished run, extending a run: what it costs and what the
learning-rate schedule does.

Real `metarec train` processes on one tiny run; compile counts come from
the run's own warm-up log line and from JAX's compile log
(`JAX_LOG_COMPILES`), never from seconds.
"""

import filecmp
import json
import os
import re
import shutil
import warnings

import jax
import numpy as np
import optax
import pytest

from conftest import config_path
from faults import copy_run
from procs import checkpoint_steps, metarec
from metarec_jax import config_io
from metarec_jax.train import start
from metarec_jax.workdir import optim, resume

TINY = f"--config={config_path('tiny')}"
# No validation, one bucket, the learning rate logged at every step.
QUIET = ["--config.train.eval_every_steps=-1", "--config.log.every_steps=1",
         "--config.data.buckets=(16,)"]
# What JAX logs (with JAX_LOG_COMPILES) for each program it compiles or
# loads from the persistent compilation cache.
COMPILE_LOG = re.compile(r"Compiling |XLA compilation|compilation cache hit")


def train_config(**kw):
  """A complete `train` section with these schedule keys."""
  return config_io.complete({"train": {
      "lr": 2e-3, "warmup_steps": 2, "end_lr_factor": 0.05, "num_steps": 6,
      "schedule_steps": 0, **kw}}).train


def logged_rates(workdir: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["train/lr"] for r in rows if "train/lr" in r}


def expected_rates(tc, steps, horizon) -> dict[int, float]:
  # The rate logged at step s is the one of the update that made it.
  return {s: optim.host_learning_rate(tc, s - 1, horizon) for s in steps}


def warmup_counts(stderr: str) -> tuple[int, int]:
  """(programs compiled, programs from the persistent cache) of the one
  warm-up log line."""
  found = re.findall(r"\((\d+) program\(s\) compiled, (\d+) from the"
                     r" persistent compilation cache\)", stderr)
  assert len(found) == 1, stderr
  return int(found[0][0]), int(found[0][1])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  """A finished 6-step tiny run (it also fills the session's persistent
  compilation cache with its meta-step)."""
  workdir = str(tmp_path_factory.mktemp("base"))
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET)
  assert out.returncode == 0, out.stderr
  assert checkpoint_steps(workdir) == [3, 6]
  return workdir


def test_learning_rate_is_optax_warmup_cosine_decay():
  for warmup, horizon in ((2, 6), (0, 10), (100, 1500), (5, 3)):
    tc = train_config(warmup_steps=warmup)
    w = min(warmup, horizon - 1)
    reference = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if w else tc.lr, peak_value=tc.lr, warmup_steps=w,
        decay_steps=horizon, end_value=tc.lr * tc.end_lr_factor)
    steps = np.arange(0, horizon + 5)
    # One small program per case (eager jax.numpy would compile each op).
    # The hyperparameters are traced, as in the meta-step.
    ours, theirs = jax.jit(lambda s, h: (optim.learning_rate(h, s),
                                         reference(s)))(
                                             steps, optim.hyperparams(
                                                 tc, horizon))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        [optim.host_learning_rate(tc, s, horizon) for s in steps], theirs,
        rtol=1e-5, atol=1e-9)


def test_a_rate_beyond_float32_logs_nan_without_a_numpy_warning():
  """`train.lr=1e39` passes the config check and is infinite in float32
  (test_nonfinite trains with it): the host's figure for a log line is the
  step's own nan, with no RuntimeWarning from numpy."""
  tc = train_config(warmup_steps=2)
  tc.lr = 1e39
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rates = [optim.host_learning_rate(tc, s, 6) for s in (0, 1, 4)]
  step = jax.jit(optim.learning_rate)(optim.hyperparams(tc, 6),
                                      np.array([0, 1, 4]))
  np.testing.assert_array_equal(rates, step)
  assert not np.isfinite(rates).any()


def test_schedule_horizon_resolution():
  saved = {"train": {"num_steps": 6, "schedule_steps": 6}}
  assert resume.schedule_horizon(train_config(num_steps=9), None) == 9
  assert resume.schedule_horizon(train_config(num_steps=9), saved) == 6
  assert resume.schedule_horizon(
      train_config(num_steps=9, schedule_steps=9), saved) == 9
  # A checkpoint written before the key existed: its num_steps.
  assert resume.schedule_horizon(train_config(num_steps=9),
                                 {"train": {"num_steps": 4}}) == 4


def test_finished_run_exits_at_once_compiling_and_writing_nothing(
    base_run, tmp_path, monkeypatch):
  # A folder with a space: the command to run next is quoted for a shell.
  workdir = copy_run(base_run, tmp_path / "my runs")
  before = tmp_path / "before"
  shutil.copytree(workdir, before)
  monkeypatch.setenv("JAX_LOG_COMPILES", "1")
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET)
  assert out.returncode == 0, out.stderr
  assert not COMPILE_LOG.search(out.stderr), out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert (f"nothing to train: the run in {workdir} has reached step 6"
          " (train.num_steps=6)") in last
  assert f"`metarec eval --workdir='{workdir}'`" in last
  assert "trained to step" not in out.stderr
  # Nothing written: no checkpoint, metrics row, config or event file.
  diff = filecmp.dircmp(before, workdir)
  assert not (diff.left_only or diff.right_only or diff.diff_files)
  for sub in ("checkpoints", "tensorboard"):
    assert sorted(os.listdir(before / sub)) == sorted(
        os.listdir(os.path.join(workdir, sub)))


def test_extending_keeps_the_schedule_then_restretches_when_asked(
    base_run, tmp_path):
  workdir = copy_run(base_run, tmp_path)
  tc = train_config()
  final = tc.lr * tc.end_lr_factor

  # Default: the schedule keeps its 6 steps; the rate stays at its final
  # value past them, continuing the same curve (no jump at step 6).
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET,
                "--config.train.num_steps=9")
  assert out.returncode == 0, out.stderr
  assert "resumed from the checkpoint of step 6" in out.stderr
  assert warmup_counts(out.stderr)[0] == 0  # nothing compiled ...
  assert warmup_counts(out.stderr)[1] >= 1  # ... loaded from the cache
  assert "after the warm-up" not in out.stderr
  assert "keeps its length of 6 steps (no jump)" in out.stderr
  assert "--config.train.schedule_steps=9" in out.stderr
  rates = logged_rates(workdir)
  assert sorted(rates) == list(range(1, 10))
  np.testing.assert_allclose([rates[s] for s in range(1, 10)],
                             list(expected_rates(tc, range(1, 10), 6)
                                  .values()), rtol=1e-6)
  assert rates[7] <= rates[6] and rates[7] == rates[8] == rates[9]
  np.testing.assert_allclose(rates[9], final, rtol=1e-6)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["config"]["train"]["schedule_steps"] == 6

  # Asked for: the cosine re-stretched over 12 steps; the rate jumps up at
  # the resume point and follows the 12-step schedule from there.
  out = metarec("train", TINY, f"--workdir={workdir}", *QUIET,
                "--config.train.num_steps=12",
                "--config.train.schedule_steps=12")
  assert out.returncode == 0, out.stderr
  assert warmup_counts(out.stderr)[0] == 0
  assert "train.schedule_steps 6 -> 12, as asked" in out.stderr
  rates = logged_rates(workdir)
  np.testing.assert_allclose([rates[s] for s in (10, 11, 12)],
                             list(expected_rates(tc, (10, 11, 12), 12)
                                  .values()), rtol=1e-6)
  assert rates[10] > 2 * rates[9]
  assert 12 in checkpoint_steps(workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["config"]["train"]["schedule_steps"] == 12


def test_shortening_a_run_says_where_its_rate_ends(caplog):
  """train.num_steps 600 -> 300 on resume kept the 600-step schedule in
  silence: the run ended at about half the peak rate, not at its final
  one (helper L)."""
  import logging  # pylint: disable=g-import-not-at-top
  saved = {"train": {"lr": 2e-3, "warmup_steps": 2, "end_lr_factor": 0.05,
                     "num_steps": 600, "schedule_steps": 600}}
  tc = train_config(num_steps=300, schedule_steps=600)
  with caplog.at_level(logging.INFO, logger="metarec"):
    resume.log_schedule_change(tc, saved, step=120, horizon=600)
  end = optim.host_learning_rate(tc, 300, 600)
  assert (f"train.num_steps 600 -> 300: the learning-rate schedule keeps its"
          f" length of 600 steps, so the run ends at rate {end:.3g}, not at"
          f" its final {2e-3 * 0.05:.3g}; to end the cosine at step 300"
          " instead, set --config.train.schedule_steps=300") in caplog.text
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="metarec"):  # already past it
    resume.log_schedule_change(train_config(num_steps=100,
                                            schedule_steps=600),
                               saved, step=120, horizon=600)
  assert "ends at rate" not in caplog.text


@pytest.mark.parametrize("keys, horizon, said", [
    ({"warmup_steps": 100, "num_steps": 150}, 150, "train.num_steps"),
    ({"warmup_steps": 100, "num_steps": 80}, 80, "rises for 79 steps"),
    ({"warmup_steps": 100, "num_steps": 50, "schedule_steps": 200}, 200,
     "train.schedule_steps"),
    ({"warmup_steps": 100, "num_steps": 1500}, 1500, None),
    ({"warmup_steps": 2, "num_steps": 6}, 6, None),
])
def test_a_warm_up_of_half_the_schedule_or_more_is_named(keys, horizon, said,
                                                         caplog):
  """A run shortened with `train.num_steps` alone kept the default
  warm-up of 100 steps: the rate rose for most of the run (or all of it)
  and hardly decayed, without a word."""
  with caplog.at_level("WARNING", logger="metarec"):
    start.warn_short_schedule(train_config(**keys), horizon)
  lines = [r.getMessage() for r in caplog.records]
  if said is None:
    assert not lines
  else:
    assert len(lines) == 1 and said in lines[0]
    assert "lower train.warmup_steps" in lines[0]
