"""What a stopped or resumed run writes and says is true.

Each test copies the finished tiny Meta-SGD run and removes its last
checkpoint (step 6), as if `kill -9` had struck after step 6 was logged but
before its checkpoint was committed, then resumes it in this process.
"""

import json
import logging
import os
import shutil

import pytest

from conftest import config_path
from metarec_jax import config_io, runtime
from metarec_jax.train import train_and_evaluate


@pytest.fixture
def killed_after_step_6(tiny_metasgd_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_metasgd_run, workdir)
  # The newest two, and the validated start (step 0) where it is the best.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")),
                key=int)[-2:] == ["3", "6"]
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 7, "train/lo')  # a row cut short by the kill
  return workdir


def config_of(workdir):
  return config_io.read_workdir_config(workdir)


def steps_logged(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


def test_a_resume_drops_the_rows_logged_past_its_checkpoint(
    killed_after_step_6):
  workdir = killed_after_step_6
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    before = [json.loads(line)["step"] for line in f if line.endswith("\n")]
  assert 4 in before and 6 in before
  train_and_evaluate(config_of(workdir), workdir)
  # Steps 4 to 6 were run and logged again, once; the cut row is gone.
  assert steps_logged(workdir) == before


def test_a_stop_during_the_warm_up_does_not_claim_a_save(
    killed_after_step_6, monkeypatch, caplog):
  workdir = killed_after_step_6
  # The signal arrives between two compilations of the warm-up.
  monkeypatch.setattr(runtime, "run_compile_jobs",
                      lambda jobs, should_stop: False)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    summary = train_and_evaluate(config_of(workdir), workdir)
  assert summary["preempted"] and summary["step"] == 3
  stops = [r.getMessage() for r in caplog.records
           if "stopped by a signal" in r.getMessage()]
  assert len(stops) == 1 and "(saved)" not in stops[0], stops
  assert ("at step 3 (nothing new to save: the checkpoint of step 3 holds"
          " it)") in stops[0]
  assert max(map(int, os.listdir(os.path.join(workdir, "checkpoints")))) == 3


def test_a_stop_before_the_first_step_says_nothing_was_saved(
    tmp_path, monkeypatch, caplog):
  workdir = str(tmp_path / "fresh")
  config = config_io.apply_overrides(
      config_io.load_config_file(config_path("tiny")),
      [("meta.algorithm", "metasgd")])
  monkeypatch.setattr(runtime, "run_compile_jobs",
                      lambda jobs, should_stop: False)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    summary = train_and_evaluate(config, workdir)
  assert summary["step"] == 0
  assert any("at step 0 (before the first step: nothing to save)"
             in r.getMessage() for r in caplog.records)
  assert not os.listdir(os.path.join(workdir, "checkpoints"))


def test_a_checkpoint_without_a_parameter_of_the_model_is_named(tmp_path):
  """E.g. an anchored run saved before the validated shares: no config key
  changed, the model has a parameter the checkpoint lacks."""
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import resume  # pylint: disable=g-import-not-at-top
  config = config_io.to_dict(config_io.load_config_file(config_path("tiny")))
  saved = {"model/gate": ((), "float32")}
  current = {**saved, "model/share": ((2,), "float32")}
  with pytest.raises(InputError, match=r"earlier metarec whose model had"
                     r" other parameters; model/share: absent -> \(2,\)"):
    resume.check_resume(config, config, saved, current, step=1000)
