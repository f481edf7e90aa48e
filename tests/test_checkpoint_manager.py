"""`workdir.manager`: orbax's manager opened on a damaged or changing work
directory (a sweep found tracebacks in train, eval and export)."""

import errno
import os

import pytest

from cli_run import metarec_here
from faults import copy_run, train_finished_run
from metarec_jax.workdir import manager


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  return train_finished_run(str(tmp_path_factory.mktemp("finished")))


def _damage(workdir, content=b'{"val_mae": 0.5'):
  path = os.path.join(workdir, "checkpoints", "3", "metrics", "metrics")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(content)
  return path


@pytest.mark.parametrize("command", ["eval", "eval_it", "train"])
def test_a_damaged_metrics_file_costs_only_its_step(finished_run, tmp_path,
                                                    command):
  """A damaged metrics file of step 3 was one error for the whole work
  directory: `eval --step=6` and the resume exited 2 over it; and `eval
  --step=3` said the checkpoint of step 3 "cannot be read
  (StopIteration: 0)", its state intact."""
  workdir = copy_run(finished_run, tmp_path)
  path = _damage(workdir)
  step = "3" if command == "eval_it" else "6"
  command = command.removesuffix("_it")
  out = metarec_here(command, f"--workdir={workdir}",
                     *(["--support_curve=false", f"--step={step}"]
                       if command == "eval" else
                       ["--config.train.num_steps=8"]))
  assert out.returncode == 0, out.stderr
  damaged = (f"{path}: damaged: not the metrics of a checkpoint (a JSON"
             " object with a number `val_mae`); step 3 ")
  if command == "eval":  # a reader leaves it in place, unvalidated
    assert damaged + "counts as not validated" in out.stderr
    # The log names the step --step chose, as it names a default's.
    assert f"using the checkpoint of step {step} (--step)" in out.stderr
    assert os.path.exists(path)
  else:  # the trainer moves it aside, where keeping would not delete it
    assert damaged + "is moved aside" in out.stderr
    aside = os.listdir(os.path.join(workdir, "checkpoints-unreadable"))
    assert [n.split("-")[0] for n in aside] == ["3"]
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "3"))


@pytest.mark.parametrize("content", [b'{"garbage": true}',
                                     b'{"val_mae": NaN}'])
def test_metrics_without_a_validation_mae_fail_no_later_save(
    finished_run, tmp_path, content):
  # Each later save ended "cannot write .../checkpoints/8: 'val_mae'"
  # (exit 1): orbax ranks every step's metrics at a save.
  from procs import checkpoint_steps  # pylint: disable=g-import-not-at-top
  workdir = copy_run(finished_run, tmp_path)
  _damage(workdir, content)
  out = metarec_here("train", f"--workdir={workdir}",
                     "--config.train.num_steps=8")
  assert out.returncode == 0, out.stderr
  assert checkpoint_steps(workdir)[-1] == 8


@pytest.mark.parametrize("content", [b'{"val_mae": 0.5', b'{"val_mae": "abc"}',
                                     b"[1]", b"\xff", b'{"val_mae": true}'])
def test_damaged_metrics_are_named(tmp_path, content):
  (tmp_path / "3" / "metrics").mkdir(parents=True)
  (tmp_path / "3" / "metrics" / "metrics").write_text('{"val_mae": null}')
  (tmp_path / "4" / "metrics").mkdir(parents=True)
  (tmp_path / "4" / "metrics" / "metrics").write_text('{"val_mae": 0.5}')
  (tmp_path / "5").mkdir()  # saved between validations: no metrics
  assert manager.damaged_metrics(str(tmp_path), "val_mae") == {}
  (tmp_path / "5" / "metrics").mkdir()
  (tmp_path / "5" / "metrics" / "metrics").write_bytes(content)
  assert manager.damaged_metrics(str(tmp_path), "val_mae") == {
      5: str(tmp_path / "5" / "metrics" / "metrics")}


def test_a_step_removed_while_the_manager_opens_is_opened_again(tmp_path):
  """A trainer removing an old step (`checkpoint.keep`) between orbax's
  listing and its read of the step's metrics: `eval` beside a running
  `train` exited 1 with "checkpoints/58: No such file or directory" about
  one time in five."""
  directory = str(tmp_path)
  calls = []

  def make(gone):
    calls.append(gone)
    if len(calls) < 3:
      raise FileNotFoundError(errno.ENOENT, "No such file or directory",
                              gone)
    return "manager"

  assert manager.open_manager(directory, "val_mae",
                              lambda **_: make(f"{directory}/58"),
                              read_only=True) == "manager"
  assert len(calls) == 3
  calls.clear()
  with pytest.raises(FileNotFoundError):  # not a step of this directory
    manager.open_manager(directory, "val_mae", lambda **_: make("/elsewhere"),
                         read_only=True)
  assert len(calls) == 1


def test_a_step_removed_while_a_reader_lists_again_is_listed_again(
    finished_run, monkeypatch):
  """Every `Checkpointer.steps()` (`latest_step`, `validated`, `best`)
  reloads orbax's manager, which stats each step folder it listed: a
  trainer removing another step meanwhile failed `eval` beside it with
  "checkpoints/2135: No such file or directory", exit 1 (helper L, 2 of
  12 evaluations under a save every 2 steps)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  checkpointer = ckpt_lib.Checkpointer(finished_run, read_only=True)
  steps = checkpointer.steps()
  real_reload, real_metrics = (ocp.CheckpointManager.reload,
                               ocp.CheckpointManager._get_metrics)  # pylint: disable=protected-access
  failures = []

  def reload(self):
    if len(failures) < 2:
      failures.append("reload")
      raise FileNotFoundError(errno.ENOENT, "No such file or directory",
                              os.path.join(finished_run, "checkpoints", "99"))
    return real_reload(self)

  def metrics(self, step):
    if step == steps[-1]:  # removed since it was listed
      raise FileNotFoundError(errno.ENOENT, "No such file or directory")
    return real_metrics(self, step)

  monkeypatch.setattr(ocp.CheckpointManager, "reload", reload)
  assert checkpointer.steps() == steps and failures == ["reload"] * 2
  validated = checkpointer.validated()
  monkeypatch.setattr(ocp.CheckpointManager, "_get_metrics", metrics)
  checkpointer.manager.warned.clear()
  assert checkpointer.validated() == {
      s: v for s, v in validated.items() if s != steps[-1]}
  checkpointer.close()


def test_a_metrics_file_its_record_rules_out_counts_as_damaged(tmp_path,
                                                               caplog):
  """One changed digit in a metrics file (0.5119 -> 0.1119) made its step
  the best checkpoint that eval and export use, with no warning; a trainer
  then kept it for good (helper D). Its own record (`selection`) rules
  such a value out: a step that set the `trained` minimum (`stale` 0)
  validated at it, one that did not validated at or above it."""
  import json  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  directory = tmp_path / "checkpoints"
  for step, value, trained, stale in ((200, 0.51, 0.51, 0), (220, 0.11, 0.51, 1),
                                      (240, 0.10, 0.50, 0), (260, 0.52, 0.50, 1)):
    (directory / str(step) / "metrics").mkdir(parents=True)
    (directory / str(step) / "metrics" / "metrics").write_text(
        json.dumps({"val_mae": value}))
    (directory / str(step) / "config").mkdir()
    (directory / str(step) / "config" / "metadata").write_text(json.dumps(
        {"selection": {"trained": trained, "stale": stale}}))
  (directory / "280").mkdir()  # saved between validations: no metrics
  assert manager.edited_metrics(str(directory), "val_mae") == {
      220: str(directory / "220" / "metrics" / "metrics"),
      240: str(directory / "240" / "metrics" / "metrics")}
  with caplog.at_level(logging.WARNING, logger="metarec"):
    found = manager.open_manager(str(directory), "val_mae", lambda **f: f,
                                 read_only=True)
  assert found["damaged"] == {220, 240}
  assert found["recovered"] == {240: {"val_mae": 0.5}}
  assert (f"{directory}/220/metrics/metrics: damaged: its `val_mae` is not"
          " the validation its checkpoint's record (config/metadata) holds;"
          " step 220 counts as not validated") in caplog.text


def test_a_damaged_best_step_takes_its_validation_from_its_record(tmp_path):
  """A damaged metrics file of a finished run's best checkpoint: the rerun
  of its command moved the checkpoint aside, and eval and export then
  served a worse one in silence. A step that improved on every trained
  step before it (`stale` 0 in its record) validated at the `trained`
  minimum it set: that is its validation, written back by a trainer."""
  import json  # pylint: disable=g-import-not-at-top
  directory = tmp_path / "checkpoints"
  for step, stale in ((200, 0), (220, 1)):
    (directory / str(step) / "metrics").mkdir(parents=True)
    (directory / str(step) / "metrics" / "metrics").write_text('{"val_')
    (directory / str(step) / "config").mkdir()
    (directory / str(step) / "config" / "metadata").write_text(json.dumps(
        {"selection": {"trained": 0.5148845801750819, "stale": stale}}))
  found = manager.open_manager(str(directory), "val_mae", lambda **f: f,
                               read_only=True)
  assert found["recovered"] == {200: {"val_mae": 0.5148845801750819}}
  assert found["damaged"] == {200, 220}  # 220: not validated
  assert os.path.exists(directory / "220")  # a reader moves nothing
  found = manager.open_manager(str(directory), "val_mae", lambda **f: f,
                               read_only=False)
  assert found == {"damaged": frozenset(), "unlisted": frozenset(),
                   "recovered": {}}
  assert json.loads((directory / "200" / "metrics" / "metrics").read_text()
                    ) == {"val_mae": 0.5148845801750819}
  assert not os.path.exists(directory / "220")  # moved aside, as before
  assert os.listdir(tmp_path / "checkpoints-unreadable")[0].startswith("220-")


def test_the_recovered_validation_selects_the_checkpoint(finished_run,
                                                        tmp_path):
  """Through orbax's manager: the step whose damaged metrics its record
  recovers is the best validated checkpoint that eval and export use."""
  import json  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = copy_run(finished_run, tmp_path)
  _damage(workdir)
  record = os.path.join(workdir, "checkpoints", "3", "config", "metadata")
  with open(record) as f:
    saved = json.load(f)
  saved["selection"] = {"trained": 0.4, "stale": 0}
  with open(record, "w") as f:
    json.dump(saved, f)
  assert checkpoint.Checkpointer(workdir, read_only=True).best() == (3, 0.4)
