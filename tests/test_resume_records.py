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


def test_a_resume_leaves_tensorboard_curves_going_forward(
    killed_after_step_6):
  """TensorBoard showed steps 4 and 6 twice (..., 4, 6, 4, 6, ...): the
  events of the killed run past its checkpoint stayed beside the new."""
  from tensorboard.backend.event_processing import plugin_event_accumulator  # pylint: disable=g-import-not-at-top
  workdir = killed_after_step_6
  train_and_evaluate(config_of(workdir), workdir)
  acc = plugin_event_accumulator.EventAccumulator(
      os.path.join(workdir, "tensorboard"),
      size_guidance={plugin_event_accumulator.TENSORS: 0})
  acc.Reload()
  steps = [e.step for e in acc.Tensors("train/loss")]
  assert steps == sorted(set(steps)) and 6 in steps, steps


def test_a_resume_with_nothing_to_train_drops_the_killed_runs_rows(
    killed_after_step_6):
  """Resumed with train.num_steps at its checkpoint's step, the run said
  "nothing to train" and kept the rows (and TensorBoard events) the
  killed run logged past it, drawn by `metarec plot`."""
  from tensorboard.backend.event_processing import plugin_event_accumulator  # pylint: disable=g-import-not-at-top
  workdir = killed_after_step_6
  assert max(steps_logged_whole(workdir)) == 6
  config = config_of(workdir)
  config.train.num_steps = 3
  summary = train_and_evaluate(config, workdir)
  assert summary["finished"] and summary["step"] == 3
  assert max(steps_logged(workdir)) == 3
  acc = plugin_event_accumulator.EventAccumulator(
      os.path.join(workdir, "tensorboard"),
      size_guidance={plugin_event_accumulator.TENSORS: 0})
  acc.Reload()
  assert max(e.step for e in acc.Tensors("train/loss")) <= 3
  # A finished run left as it was is not written to again.
  before = os.listdir(os.path.join(workdir, "tensorboard"))
  train_and_evaluate(config, workdir)
  assert os.listdir(os.path.join(workdir, "tensorboard")) == before


def steps_logged_whole(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def test_a_restart_without_any_checkpoint_logs_no_step_twice(
    tiny_metasgd_run, tmp_path):
  """kill -9 before the first checkpoint (the start's, step 0) was
  committed: the restart began afresh but kept the killed run's step-0
  rows, so `metrics.jsonl` and TensorBoard held step 0's validation twice."""
  from tensorboard.backend.event_processing import plugin_event_accumulator  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_metasgd_run, workdir)
  before = steps_logged(workdir)
  assert before.count(0) == 1
  checkpoints = os.path.join(workdir, "checkpoints")
  for name in os.listdir(checkpoints):
    shutil.rmtree(os.path.join(checkpoints, name))
  train_and_evaluate(config_of(workdir), workdir)
  assert steps_logged(workdir) == before
  acc = plugin_event_accumulator.EventAccumulator(
      os.path.join(workdir, "tensorboard"),
      size_guidance={plugin_event_accumulator.TENSORS: 0})
  acc.Reload()
  for tag in ("val/mae", "train/loss"):
    steps = [e.step for e in acc.Tensors(tag)]
    assert steps == sorted(set(steps)), (tag, steps)


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
  assert stops[0].endswith(f"resume with `metarec train --workdir={workdir}`")
  assert max(map(int, os.listdir(os.path.join(workdir, "checkpoints")))) == 3
  # A resume with other settings that saved nothing: config.json holds
  # them at its first save only, so the plain advice dropped them in
  # silence (helper L: the advised command said "nothing to train").
  caplog.clear()
  changed = config_io.apply_overrides(config_of(workdir), [
      ("train.num_steps", "40"), ("train.lr", "0.0031")])
  with caplog.at_level(logging.WARNING, logger="metarec"):
    train_and_evaluate(changed, workdir)
  stop, = [r.getMessage() for r in caplog.records
           if "stopped by a signal" in r.getMessage()]
  assert stop.endswith(f"resume with `metarec train --workdir={workdir}"
                       " --config.train.lr=0.0031 --config.train.num_steps=40`")


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


def _stop_during_validation_of(step_to_cut, monkeypatch):
  """The next validation of `step_to_cut` receives SIGTERM as it starts
  (the evaluation then stops between batches, as a real one does)."""
  import signal  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import validation  # pylint: disable=g-import-not-at-top
  real = validation.validate

  def cut(evaluator, trainer, params, step, **kw):
    if step == step_to_cut:
      os.kill(os.getpid(), signal.SIGTERM)
    return real(evaluator, trainer, params, step, **kw)

  monkeypatch.setattr(validation, "validate", cut)


def test_a_validation_cut_short_is_done_on_resume(
    killed_after_step_6, tiny_metasgd_run, monkeypatch, caplog):
  """A stop during the last step's validation saved step 6 without it:
  the resumed run said "nothing to train", `eval` used step 3 and the
  support curve was never written."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint as ckpt_lib
  workdir = killed_after_step_6
  os.remove(os.path.join(workdir, "eval", "support_curve.json"))
  with monkeypatch.context() as m:
    _stop_during_validation_of(6, m)
    with caplog.at_level(logging.WARNING, logger="metarec"):
      summary = train_and_evaluate(config_of(workdir), workdir)
  assert summary["preempted"] and summary["step"] == 6
  assert any("at step 6 (saved; its validation, cut short, is done on"
             " resume)" in r.getMessage() for r in caplog.records)
  checkpointer = ckpt_lib.Checkpointer(workdir)
  assert 6 in checkpointer.steps() and 6 not in checkpointer.validated()
  checkpointer.close()
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="metarec"):
    summary = train_and_evaluate(config_of(workdir), workdir)
  assert "validating the restored step" in caplog.text
  assert "nothing to train" not in caplog.text
  resumed, straight = (ckpt_lib.Checkpointer(w) for w in (workdir,
                                                           tiny_metasgd_run))
  assert resumed.validated()[6] == straight.validated()[6]
  assert resumed.best() == straight.best()
  resumed.close()
  straight.close()
  assert os.path.exists(os.path.join(workdir, "eval", "support_curve.json"))


def test_a_stop_during_the_first_validation_saves_nothing(
    tmp_path, monkeypatch, caplog):
  """It went on to step 1 and saved it: the start, a candidate of its own,
  was never validated."""
  workdir = str(tmp_path / "fresh")
  config = config_io.load_config_file(config_path("tiny"))
  _stop_during_validation_of(0, monkeypatch)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    summary = train_and_evaluate(config, workdir)
  assert summary["preempted"] and summary["step"] == 0
  assert any("at step 0 (before the first step: nothing to save)"
             in r.getMessage() for r in caplog.records)
  assert not os.listdir(os.path.join(workdir, "checkpoints"))


def test_a_resumed_run_stops_early_where_an_uninterrupted_one_does(tmp_path):
  """The patience restarted at 0 on every resume: a preempted run stopped
  early at another step than the same run uninterrupted."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint as ckpt_lib

  def config(steps):
    c = config_io.load_config_file(config_path("tiny"))
    c.train.num_steps, c.train.schedule_steps = steps, 12
    c.train.eval_every_steps = c.checkpoint.every_steps = 1
    c.train.lr = 0.05
    c.train.early_stop_patience = 3
    return c

  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  first = train_and_evaluate(config(12), straight)
  assert first.get("early_stopped") and first["step"] < 12
  train_and_evaluate(config(2), resumed)  # stopped after step 2
  again = train_and_evaluate(config(12), resumed)
  assert again.get("early_stopped") and again["step"] == first["step"]
  records = []
  for workdir in (straight, resumed):
    checkpointer = ckpt_lib.Checkpointer(workdir)
    records.append(checkpointer.read_record(first["step"])["selection"])
    checkpointer.close()
  assert records[0] == records[1] and records[0]["stale"] == 3


def test_a_patience_spent_at_the_last_step_is_no_early_stop(tmp_path):
  """Spent exactly at train.num_steps, it was logged as an early stop and
  a resume with a larger num_steps was refused ("stopped early at step
  4"; helper T). It now trains on, to the first validation that finds
  nothing better."""
  def config(steps):
    c = config_io.load_config_file(config_path("tiny"))  # anchored: every
    c.train.num_steps, c.train.eval_every_steps = steps, 2  # validation
    c.train.early_stop_patience = 1  # ties, none better
    return c

  workdir = str(tmp_path / "run")
  first = train_and_evaluate(config(4), workdir)
  assert first["step"] == 4 and not first.get("early_stopped")
  again = train_and_evaluate(config(8), workdir)
  assert again["step"] == 6 and again.get("early_stopped")
  # Stopped early now (at 6 of 8): a larger patience is what trains on.
  assert train_and_evaluate(config(12), workdir).get("finished")


def test_a_stop_during_the_support_curve_says_so(killed_after_step_6,
                                                 monkeypatch, caplog):
  """The run ended "trained to step 6", exit 0, with no curve and no word
  of the signal."""
  import signal  # pylint: disable=g-import-not-at-top
  from metarec_jax.eval import support_curve  # pylint: disable=g-import-not-at-top
  workdir = killed_after_step_6
  os.remove(os.path.join(workdir, "eval", "support_curve.json"))
  real = support_curve.evaluate_and_write

  def stopped(*args, **kw):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kw)

  monkeypatch.setattr(support_curve, "evaluate_and_write", stopped)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    summary = train_and_evaluate(config_of(workdir), workdir)
  assert summary["preempted"] and summary["step"] == 6
  assert "stopped by a signal at step 6 before its support curve" in (
      caplog.text)
  assert not os.path.exists(os.path.join(workdir, "eval",
                                         "support_curve.json"))


def _early_stopping_config(steps=30):
  c = config_io.load_config_file(config_path("tiny"))
  c.train.num_steps = c.train.schedule_steps = steps
  c.train.eval_every_steps = c.checkpoint.every_steps = 3
  c.train.early_stop_patience = 1
  return c


@pytest.fixture(scope="module")
def stopped_early(tmp_path_factory):
  """`(workdir, summary)` of `_early_stopping_config`'s run, uninterrupted:
  the reference of the tests that stop it."""
  workdir = str(tmp_path_factory.mktemp("early") / "straight")
  summary = train_and_evaluate(_early_stopping_config(), workdir)
  assert summary.get("early_stopped") and summary["step"] < 30
  return workdir, summary


def test_a_redone_validation_that_ends_the_patience_ends_the_run(
    stopped_early, tmp_path, monkeypatch, caplog):
  """It trained one more step, whose donated buffers the validated params
  shared: the support curve then read freed memory (a segfault)."""
  from metarec_jax.workdir import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  (straight, first), cut = stopped_early, str(tmp_path / "cut")
  with monkeypatch.context() as m:
    _stop_during_validation_of(first["step"], m)
    assert train_and_evaluate(_early_stopping_config(), cut)["preempted"]
  again = train_and_evaluate(_early_stopping_config(), cut)
  assert again.get("early_stopped") and again["step"] == first["step"]
  checkpointer = ckpt_lib.Checkpointer(cut)
  assert checkpointer.latest_step() == first["step"]
  checkpointer.close()
  assert os.path.exists(os.path.join(cut, "eval", "support_curve.json"))
  # The command of a run that stopped early, run again, trains nothing.
  with caplog.at_level(logging.INFO, logger="metarec"):
    done = train_and_evaluate(_early_stopping_config(), straight)
  assert done == {"step": first["step"], "finished": True}
  assert f"stopped early at step {first['step']}" in caplog.text


def test_a_validation_done_just_before_a_stop_is_saved_with_its_step(
    tmp_path, monkeypatch):
  """The stop, seen after the validation, saved the trained state without
  it: the step was never a candidate."""
  import signal  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import validation  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  real = validation.validate

  def then_stop(evaluator, trainer, params, step, **kw):
    out = real(evaluator, trainer, params, step, **kw)
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(validation, "validate", then_stop)
  workdir = str(tmp_path / "run")
  config = _early_stopping_config(9)
  config.train.early_stop_patience = 0
  assert train_and_evaluate(config, workdir)["preempted"]
  checkpointer = ckpt_lib.Checkpointer(workdir)
  assert 3 in checkpointer.validated()
  checkpointer.close()


def test_a_stop_right_after_a_redone_validation_is_a_stop(stopped_early,
                                                          tmp_path,
                                                          monkeypatch,
                                                          caplog):
  """The validation that ended the patience was redone, the signal came
  next: the run ended "early stopped", exit 0, with no curve and no word."""
  import signal  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import validation  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  straight = stopped_early[1]
  with monkeypatch.context() as m:
    _stop_during_validation_of(straight["step"], m)
    assert train_and_evaluate(_early_stopping_config(), workdir)["preempted"]
  real = validation.validate

  def then_stop(evaluator, trainer, params, step, **kw):
    out = real(evaluator, trainer, params, step, **kw)
    os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(validation, "validate", then_stop)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    summary = train_and_evaluate(_early_stopping_config(), workdir)
  assert summary["preempted"] and summary["step"] == straight["step"]
  assert f"stopped by a signal at step {straight['step']} before its" \
      " support curve" in caplog.text
