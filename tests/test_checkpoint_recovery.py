"""A damaged, changed or moved checkpoint: fall back, refuse or resume.

The tests run `metarec train` on real orbax folders: as real processes,
except the refusals (in this process, `metarec_here`).
"""

import json
import os
import shutil
import threading

import pytest

from cli_run import assert_one_line_error, metarec_here
from faults import QUIET, TINY, copy_run, train_finished_run
from procs import checkpoint_steps, metarec

# orbax's restore of a damaged step fails inside an asyncio task whose
# thread later calls back into the loop the failure closed: "Event loop
# is closed", raised in that thread after the command has returned (a
# process exits before it; these tests run commands in the test process).
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 6-step tiny run with checkpoints at steps 3 and 6."""
  return train_finished_run(str(tmp_path_factory.mktemp("finished")))


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


def test_a_newest_record_without_its_config_falls_back(finished_run,
                                                       tmp_path):
  """A config item without the run's config ended a resume in a KeyError
  traceback (the record was checked for its format version only)."""
  workdir = copy_run(finished_run, tmp_path)
  path = os.path.join(workdir, "checkpoints", "6", "config", "metadata")
  with open(path) as f:
    record = json.load(f)
  del record["config"]
  with open(path, "w") as f:
    json.dump(record, f)
  out = metarec_here("train", f"--workdir={workdir}",
                     "--config.train.num_steps=8")
  assert out.returncode == 0, out.stderr
  assert "step 6: config item without the run's config" in out.stderr
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
  out = metarec_here("train", f"--workdir={workdir}",
                     "--config.train.num_steps=8")
  assert out.returncode == 1
  assert "no usable checkpoint" in out.stderr
  assert "Traceback" not in out.stderr
  assert checkpoint_steps(workdir) == [3, 6]


def test_memory_that_runs_out_in_a_restore_is_no_damaged_checkpoint(
    finished_run, tmp_path, monkeypatch):
  """Out of memory while the newest checkpoint was verified: it was moved
  aside as unreadable and the run redid its steps from the older one (or,
  each one failing alike, was told to move the folder away)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  workdir = copy_run(finished_run, tmp_path)

  def verify(*args):
    np.empty((10**18,), np.float32)  # numpy's "Unable to allocate ..."
  monkeypatch.setattr(ckpt_lib, "verify_restored", verify)
  out = metarec_here("train", f"--workdir={workdir}",
                     "--config.train.num_steps=8")
  assert out.returncode == 1, out.stderr
  assert "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("metarec train: error: out of memory (Unable to"
                         " allocate"), last
  assert "falling back" not in out.stderr
  assert checkpoint_steps(workdir) == [3, 6]
  assert not os.path.exists(os.path.join(workdir, "checkpoints-unreadable"))


def test_a_file_where_the_checkpoints_go_is_refused_before_any_work(
    finished_run, tmp_path):
  """`checkpoints` a file (a copy gone wrong): train took it for a run
  without checkpoints, compiled, dropped every metrics.jsonl row (a fresh
  start's) and then failed to save with exit 1; eval said there was no
  checkpoint."""
  workdir = copy_run(finished_run, tmp_path)
  folder = os.path.join(workdir, "checkpoints")
  shutil.rmtree(folder)
  with open(folder, "w", encoding="utf-8") as f:
    f.write("x\n")
  with open(os.path.join(workdir, "metrics.jsonl"), "rb") as f:
    rows = f.read()
  for args in (["train", "--config.train.num_steps=8"],
               ["eval", "--support_curve=false"]):
    out = metarec_here(args[0], f"--workdir={workdir}", *args[1:])
    assert_one_line_error(out, f"{folder}: not a folder of checkpoints")
  with open(os.path.join(workdir, "metrics.jsonl"), "rb") as f:
    assert f.read() == rows


@pytest.mark.parametrize("name", ["metrics.jsonl", "tensorboard", "eval"])
def test_an_entry_of_the_wrong_kind_is_refused_before_any_work(
    finished_run, tmp_path, name):
  """A folder at metrics.jsonl, a file at tensorboard/ or eval/: train
  ended in "Is a directory" or "File exists", exit 1 (for eval/, after
  training, at the final evaluation of a run that validates; this quiet
  one writes no eval/ and passed)."""
  workdir = copy_run(finished_run, tmp_path)
  path = os.path.join(workdir, name)
  if os.path.isdir(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)
  if name == "metrics.jsonl":
    os.mkdir(path)
    problem = (f"{path}: not a file: a work directory's metrics are a file"
               " of JSON lines")
  else:
    with open(path, "w", encoding="utf-8") as f:
      f.write("x\n")
    problem = f"--workdir: {path} is a file, not a folder"
  out = metarec_here("train", f"--workdir={workdir}",
                     "--config.train.num_steps=8")
  assert_one_line_error(out, problem)
  assert checkpoint_steps(workdir) == [3, 6]


def test_eval_of_a_damaged_checkpoint_names_it_and_the_others(
    finished_run, tmp_path):
  """eval and export never read another checkpoint than the one they name:
  the damaged newest is an error naming what is wrong with it (tensorstore's
  file and byte range, not its spec's repr) and the intact steps."""
  workdir = copy_run(finished_run, tmp_path)
  for victim in _data_files(os.path.join(workdir, "checkpoints", "6",
                                         "state")):
    with open(victim, "r+b") as f:
      f.truncate(100)
  out = metarec_here("eval", f"--workdir={workdir}", "--step=6",
                     "--support_curve=false")
  assert out.returncode == 2, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("metarec eval: error: ")
  assert "the checkpoint of step 6 cannot be read (" in last
  assert "byte range" in last.lower()  # tensorstore's own words
  assert "TensorStore details" not in last and "bound method" not in last
  assert last.endswith("the other checkpoints: 3, 0; --step=N reads"
                       " another") or last.endswith(
                           "the other checkpoints: 3; --step=N reads another")
  assert "no usable checkpoint" not in last and "move the folder" not in last
  assert checkpoint_steps(workdir)[-1] == 6  # a reader moves nothing
  assert metarec_here("eval", f"--workdir={workdir}", "--step=3",
                      "--support_curve=false").returncode == 0


@pytest.mark.parametrize("victim, damage, problem", [
    ("state/_METADATA", "delete", "is missing"),
    ("state/_METADATA", "truncate", "is damaged (not the JSON orbax wrote:"
     " JSONDecodeError"),
    ("state/array_metadatas/process_0", "flip", "is damaged (not the JSON"
     " orbax wrote: "),
    ("config/metadata", "truncate", "is damaged (not the JSON orbax wrote:"
     " JSONDecodeError"),
    ("state/_METADATA", "replace", "is damaged (not the JSON orbax wrote:"
     " no 'tree_metadata')"),
])
def test_a_damaged_metadata_file_is_named(finished_run, tmp_path, victim,
                                          damage, problem):
  # Was "cannot be read (TypeError: 'NoneType' object is not
  # subscriptable)" or a bare JSONDecodeError, naming no file.
  workdir = copy_run(finished_run, tmp_path)
  path = os.path.join(workdir, "checkpoints", "6", victim)
  size = os.path.getsize(path)
  if damage == "delete":
    os.remove(path)
  elif damage == "truncate":
    with open(path, "r+b") as f:
      f.truncate(size // 2)
  elif damage == "replace":  # JSON, not orbax's (was KeyError: 'tree_...')
    with open(path, "w") as f:
      f.write('{"garbage": true}')
  else:
    with open(path, "r+b") as f:
      f.seek(size // 2)
      f.write(b"\xbe\xef")
  out = metarec_here("eval", f"--workdir={workdir}", "--step=6",
                     "--support_curve=false")
  assert out.returncode == 2, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert f"the checkpoint of step 6 cannot be read ({path} {problem}" in last


@pytest.mark.parametrize("record", ['{"metrics": 5}', "xx{"])
def test_a_damaged_step_record_leaves_its_step_out(finished_run, tmp_path,
                                                   record):
  """orbax's record of a step (its handlers and timestamps), read for every
  step as its manager opens: one of the wrong shape ended `train` and
  `eval` in a ValueError traceback, one that is not JSON was logged with
  its content at each read."""
  workdir = copy_run(finished_run, tmp_path)
  path = os.path.join(workdir, "checkpoints", "6", "_CHECKPOINT_METADATA")
  with open(path, "w") as f:
    f.write(record)
  warning = f"{path}: damaged: not orbax's record of a checkpoint ("
  out = metarec_here("eval", f"--workdir={workdir}", "--support_curve=false")
  assert out.returncode == 0, out.stderr
  assert warning in out.stderr and "step 6 is left out" in out.stderr
  assert json.loads(out.stdout.splitlines()[-1])["step"] == 3
  assert "Traceback" not in out.stderr and "absl" not in out.stderr
  assert checkpoint_steps(workdir) == [3, 6]  # a reader moves nothing
  out = metarec("train", f"--workdir={workdir}", "--config.train.num_steps=15",
                *QUIET)
  assert out.returncode == 0, out.stderr
  assert warning in out.stderr and "step 6 is moved aside" in out.stderr
  assert "resumed from the checkpoint of step 3" in out.stderr
  # Step 6, trained and saved again, is a checkpoint like the others: the
  # keeping of the newest deletes it (hidden, it stayed, and orbax said it
  # could not find it).
  assert checkpoint_steps(workdir) == [9, 12, 15], out.stderr
  assert "Unable to find" not in out.stderr
  aside = os.listdir(os.path.join(workdir, "checkpoints-unreadable"))
  assert [n.split("-")[0] for n in aside] == ["6"]


def test_shape_changing_config_on_resume_is_refused(finished_run, tmp_path):
  workdir = copy_run(finished_run, tmp_path)
  out = metarec_here("train", f"--workdir={workdir}",
                     "--config.model.hidden=(8,8)",
                     "--config.train.num_steps=8")
  assert out.returncode == 2, out.stderr
  assert "cannot resume the checkpoint of step 6" in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("metarec train: error: cannot resume")
  assert "model.hidden" in last and "decision/fc1" in last
  assert checkpoint_steps(workdir) == [3, 6]


@pytest.mark.parametrize("flag", ["--config.eval.seed=5",
                                  "--config.eval.new_user_fraction=0.3",
                                  "--config.data.query_size=5"])
def test_a_resume_that_redraws_the_split_is_refused(finished_run, tmp_path,
                                                     flag):
  """It was accepted with an INFO line: the run then trained on users the
  new split holds out, and compared validations of other users."""
  workdir = copy_run(finished_run, tmp_path)
  before = sorted(os.listdir(workdir))
  out = metarec_here("train", f"--workdir={workdir}", flag,
                     "--config.train.num_steps=8")
  key = flag.removeprefix("--config.").split("=")[0]
  assert_one_line_error(out, "cannot resume the checkpoint of step 6: the"
                        " change redraws the evaluation split (" + key)
  assert "training on users and ratings its evaluation holds out" in (
      out.stderr)
  assert checkpoint_steps(workdir) == [3, 6]
  assert sorted(os.listdir(workdir)) == before


def test_an_eval_that_redraws_the_split_is_refused(finished_run):
  """`eval --config.eval.seed=5` reported, with exit 0, scenarios holding
  users the run had trained on (W MAE 0.5185 against 0.4534). (With
  `--ratings` the file's users are the tasks, and the keys are free.)"""
  saved = json.load(open(os.path.join(finished_run, "config.json")))
  own = saved["config"]["eval"]["seed"]
  out = metarec_here("eval", f"--workdir={finished_run}",
                     f"--config.eval.seed={own + 5}", "--support_curve=false")
  assert_one_line_error(out, "--config.eval.seed: the change redraws the"
                        f" evaluation split (eval.seed={own} -> {own + 5})")
  assert metarec_here("eval", f"--workdir={finished_run}",  # no change
                      f"--config.eval.seed={own}",
                      "--support_curve=false").returncode == 0


def _edit_config(workdir, section, key, value):
  path = os.path.join(workdir, "config.json")
  record = json.load(open(path))
  record["config"][section][key] = value
  with open(path, "w") as f:
    json.dump(record, f, indent=1)


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_config_json_edited_in_a_split_key_or_constant_is_refused(
    finished_run, tmp_path, command):
  """A hand edit of config.json: `eval` evaluated on the redrawn split
  (its UC users then held some the run trained on), exit 0, where the same
  change as an override is refused; checked against the newest
  checkpoint's own record of its config (`--step` reads any)."""
  from metarec_jax.data import store as store_lib  # pylint: disable=g-import-not-at-top
  from metarec_jax.data.convert import ratings_io  # pylint: disable=g-import-not-at-top
  store = store_lib.open_store(os.path.join(finished_run, "store"))
  ratings = str(tmp_path / "ratings.txt")
  ratings_io.write_ratings(ratings, store.user_ids[:1], store.item_ids[:1],
                           [3.0], store)
  flags = (["--support_curve=false", "--step=3"] if command == "eval" else
           [f"--ratings={ratings}", f"--out={tmp_path / 'e'}"])
  for section, key, value in (("eval", "seed", 7),
                              ("model", "global_mean", "all"),
                              ("train", "num_step", 20)):
    workdir = copy_run(finished_run, tmp_path / key)
    _edit_config(workdir, section, key, value)
    out = metarec_here(command, f"--workdir={workdir}", *flags)
    assert_one_line_error(out, "config.json: differs from the config of the"
                          " newest readable checkpoint, of step 6, in what"
                          " no resume"
                          f" changes ({section}.{key}")
  assert not os.path.exists(tmp_path / "e")
  if command == "eval":  # a newest record that cannot be read: the next
    workdir = os.path.join(tmp_path, "seed", "run")  # (it skipped the check)
    open(os.path.join(workdir, "checkpoints", "6", "config", "metadata"),
         "w").close()
    out = metarec_here(command, f"--workdir={workdir}", *flags)
    assert_one_line_error(out, "config.json: differs from the config of the"
                          " newest readable checkpoint, of step 3, in what"
                          " no resume"
                          " changes (eval.seed=")


def test_a_config_json_edited_in_another_model_key_is_named(finished_run,
                                                             tmp_path):
  """`meta.inner_steps` 2 -> 3 by hand in config.json: `eval` reported
  other figures than the checkpoint's own settings give, without a word
  (the same change as `--config.meta.inner_steps=3` is an override)."""
  workdir = copy_run(finished_run, tmp_path)
  out = metarec_here("eval", f"--workdir={workdir}", "--support_curve=false")
  assert out.returncode == 0 and "differs from the config" not in out.stderr
  steps = json.load(open(os.path.join(workdir, "config.json")))[
      "config"]["meta"]["inner_steps"]
  _edit_config(workdir, "meta", "inner_steps", steps + 1)
  out = metarec_here("eval", f"--workdir={workdir}", "--support_curve=false")
  assert out.returncode == 0, out.stderr
  assert (f"config.json differs from the config of step 6 in"
          f" meta.inner_steps={steps} -> {steps + 1} (the step's -> the"
          " file's): the file's values are used") in out.stderr


def test_a_resume_of_a_config_json_edited_in_a_constant_is_refused(
    finished_run, tmp_path):
  """It trained on around the edited constant, logging the edit as a
  change of config, where the same change as an override is kept."""
  workdir = copy_run(finished_run, tmp_path)
  _edit_config(workdir, "model", "global_mean", "all")
  out = metarec_here("train", f"--workdir={workdir}",
                     "--config.train.num_steps=8")
  assert_one_line_error(out, "cannot resume the checkpoint of step 6: the"
                        " work directory's config.json differs from the"
                        " config it was trained with in a constant of the"
                        " run (model.global_mean='training' -> 'all'")
  assert checkpoint_steps(workdir) == [3, 6]


def test_keys_metarec_does_not_read(finished_run, tmp_path):
  """A library caller's own key, which `train` writes into config.json and
  the checkpoint, reads back; one edited into config.json warns on
  resume (it was logged as a change of config) and is refused by `eval`
  (above)."""
  workdir = copy_run(finished_run, tmp_path)
  path = os.path.join(workdir, "config.json")
  record = json.load(open(path))
  record["config"]["train"]["num_step"] = 20
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  out = metarec_here("train", f"--workdir={workdir}",
                     "--config.train.num_steps=7")
  assert out.returncode == 0, out.stderr
  assert ("resuming with a key metarec does not read: train.num_step = 20"
          in out.stderr)
  # Step 7 saved it in its record: the run's own key from then on.
  assert metarec_here("eval", f"--workdir={workdir}",
                      "--support_curve=false").returncode == 0


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


def _remove_at_once(folder):
  shutil.rmtree(folder)


def _remove_item_by_item(folder):
  """As orbax removes a step: the eval met step 93 without its config item
  and called it damaged ("Item "config" was not found")."""
  shutil.rmtree(os.path.join(folder, "config"))
  threading.Timer(0.3, shutil.rmtree, (folder,)).start()


@pytest.mark.parametrize("remove", [_remove_at_once, _remove_item_by_item])
def test_a_checkpoint_removed_while_eval_reads_it_is_not_called_damaged(
    finished_run, tmp_path, monkeypatch, remove):
  """Beside a running trainer (`checkpoint.keep`), the checkpoint eval
  chose can vanish: it said "cannot be read (FileNotFoundError...)", as if
  damaged. Now a default choice is made again; an asked-for step says it
  was removed."""
  from metarec_jax.workdir import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  workdir = copy_run(finished_run, tmp_path)
  real = ckpt_lib.Checkpointer.restore
  removed = []

  def trainer_removes_it_first(self, abstract_state, step=None, **kw):
    if not removed:
      removed.append(step)
      remove(os.path.join(self.directory, str(step)))
    return real(self, abstract_state, step, **kw)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "restore",
                      trainer_removes_it_first)
  out = metarec_here("eval", f"--workdir={workdir}", "--support_curve=false")
  assert out.returncode == 0, out.stderr
  assert (f"the checkpoint of step {removed[0]} was removed while it was"
          " read (a trainer is running here): choosing again") in out.stderr
  if remove is _remove_item_by_item:
    return  # an asked-for step: the removal at once says it all
  removed.clear()
  out = metarec_here("eval", f"--workdir={workdir}", "--step=3",
                     "--support_curve=false")
  assert_one_line_error(out, "the checkpoint of step 3 was removed while it"
                        " was read (a trainer running in this work directory"
                        " keeps only checkpoint.keep of them); the"
                        " checkpoints now:")
  assert "cannot be read" not in out.stderr


def test_a_step_that_never_existed_is_not_called_removed(finished_run,
                                                          tmp_path):
  workdir = copy_run(finished_run, tmp_path)
  out = metarec_here("eval", f"--workdir={workdir}", "--step=5",
                     "--support_curve=false")
  assert out.returncode == 2, out.stderr
  assert "no checkpoint at step 5" in out.stderr
  assert "removed while it was read" not in out.stderr
  # Not first "using the checkpoint of step 5 (--step)" (helper L).
  assert "using the checkpoint of step 5" not in out.stderr
