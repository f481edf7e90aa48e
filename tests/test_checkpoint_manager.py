"""`workdir.manager`: orbax's manager opened on a damaged or changing work
directory (a sweep found tracebacks in train, eval and export)."""

import errno
import os

import pytest

from cli_run import assert_one_line_error, metarec_here
from faults import copy_run, train_finished_run
from metarec_jax.errors import InputError
from metarec_jax.workdir import manager


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  return train_finished_run(str(tmp_path_factory.mktemp("finished")))


@pytest.mark.parametrize("content", [b'{"val_mae": 0.5', b'{"val_mae": "abc"}',
                                     b"[1]", b"\xff"])
@pytest.mark.parametrize("command", ["eval", "train"])
def test_a_damaged_metrics_file_of_any_step_is_named(finished_run, tmp_path,
                                                     content, command):
  workdir = copy_run(finished_run, tmp_path)
  path = os.path.join(workdir, "checkpoints", "3", "metrics", "metrics")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(content)
  out = metarec_here(command, f"--workdir={workdir}",
                     *(["--support_curve=false"] if command == "eval" else
                       ["--config.train.num_steps=8"]))
  assert_one_line_error(out, f"{path}: damaged: not the metrics of a"
                        " checkpoint (a JSON object with a number `val_mae`);"
                        " move the step's folder 3 aside to use the others")


def test_metrics_absent_or_null_are_fine(tmp_path):
  (tmp_path / "3" / "metrics").mkdir(parents=True)
  (tmp_path / "3" / "metrics" / "metrics").write_text('{"val_mae": null}')
  (tmp_path / "5").mkdir()  # saved between validations: no metrics
  manager.check_metrics(str(tmp_path), "val_mae")
  (tmp_path / "5" / "metrics").mkdir()
  (tmp_path / "5" / "metrics" / "metrics").write_text('{"val_mae": true}')
  with pytest.raises(InputError, match="5/metrics/metrics: damaged"):
    manager.check_metrics(str(tmp_path), "val_mae")


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
                              lambda: make(f"{directory}/58")) == "manager"
  assert len(calls) == 3
  calls.clear()
  with pytest.raises(FileNotFoundError):  # not a step of this directory
    manager.open_manager(directory, "val_mae", lambda: make("/elsewhere"))
  assert len(calls) == 1
