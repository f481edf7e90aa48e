"""A config that cannot run fails at once, in one line, and creates nothing.

Every key's type and range (config_reference.ALLOWED) and the data's
source are checked before JAX starts or a work directory is created.
"""

import json
import math
import os

import numpy as np
import pytest

from cli_run import assert_one_line_error, metarec
from conftest import config_path
from metarec_jax import cli, config_io, config_reference
from metarec_jax.errors import InputError

TINY = f"--config={config_path('tiny')}"


@pytest.mark.parametrize("override, message", [
    ("--config.data.buckets=()", "config key data.buckets=(): must hold at"
     " least 1 value"),
    ("--config.data.root=MISSING", "data.root is not a folder"),
])
def test_a_bad_start_is_one_line_and_leaves_no_workdir(override, message,
                                                       tmp_path):
  workdir = tmp_path / "new"
  override = override.replace("MISSING", str(tmp_path / "missing"))
  out = metarec("train", TINY, f"--workdir={workdir}",
                "--config.data.name=movielens-1m", override)
  assert_one_line_error(out, message)
  assert not workdir.exists()


def run_cli(capsys, *args):
  """The real command line in this process: (status, stderr)."""
  status = cli.main(list(args))
  return status, capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("model.hidden=()", "config key model.hidden=(): must hold at least 1"),
    ("train.num_steps=-10", "train.num_steps=-10: must be an integer >= 1"),
    ("data.query_size=0", "data.query_size=0: must be an integer >= 1"),
    ("train.lr=0", "train.lr=0.0: must be a number > 0"),
    ("meta.inner_lr=-0.5", "meta.inner_lr=-0.5: must be a number > 0"),
    ("train.end_lr_factor=-1", "train.end_lr_factor=-1.0: must be a number"
     " >= 0"),
    ("train.end_lr_factor=1.5", "train.end_lr_factor=1.5: must be a number"
     " >= 0 and <= 1"),
    # A traceback from the model's build, after the store was built.
    ("meta.adapt=([", "meta.adapt=('([',): each value must be a regular"
     " expression: unterminated character set at position 1 (got '([')"),
])
def test_train_refuses_out_of_range_keys(override, message, tmp_path, capsys):
  workdir = tmp_path / "new"
  status, err = run_cli(capsys, "train", TINY, f"--workdir={workdir}",
                        f"--config.{override}")
  assert status == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("metarec train: error: ")
  assert message in lines[0]
  assert not workdir.exists()


def test_eval_export_and_prepare_check_their_overrides(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  config_io.write_workdir_config(
      workdir, config_io.load_config_file(config_path("tiny")))
  for args in (["eval", f"--workdir={workdir}",
                "--config.eval.batch_tasks=0"],
               ["export", f"--workdir={workdir}", "--ratings=r.csv",
                f"--out={tmp_path / 'out'}", "--config.eval.batch_tasks=0"],
               ["data", "prepare", TINY, f"--out={tmp_path / 'store'}",
                "--config.eval.batch_tasks=0"]):
    status, err = run_cli(capsys, *args)
    assert status == 2, err
    assert err.strip().splitlines() == [
        f"metarec {args[0]}: error: config key eval.batch_tasks=0: must be"
        " an integer >= 1"]
  assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


def test_a_value_edited_into_config_json_names_the_file(tmp_path, capsys):
  """A work directory's config.json with a value of the wrong type (edited
  by hand) was refused without naming the file, as if an override were
  wrong; an override's own problem still names no file."""
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  config_io.write_workdir_config(
      workdir, config_io.load_config_file(config_path("tiny")))
  path = os.path.join(workdir, "config.json")
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  record["config"]["train"]["num_steps"] = "9"
  with open(path, "w", encoding="utf-8") as f:
    json.dump(record, f)
  for args in (["eval", f"--workdir={workdir}"],
               ["export", f"--workdir={workdir}", "--ratings=r.csv",
                f"--out={tmp_path / 'out'}"],
               ["train", f"--workdir={workdir}"]):
    status, err = run_cli(capsys, *args)
    assert status == 2, err
    assert err.strip().splitlines()[-1] == (
        f"metarec {args[0]}: error: {path}: config key train.num_steps='9':"
        " must be an integer >= 1")
  status, err = run_cli(capsys, "eval", f"--workdir={workdir}",
                        "--config.train.num_steps=9",
                        "--config.eval.batch_tasks=0")
  assert status == 2 and err.strip().splitlines() == [
      "metarec eval: error: config key eval.batch_tasks=0: must be an"
      " integer >= 1"]


def test_a_config_file_with_a_key_metarec_lacks_is_refused(tmp_path):
  """A typo in a config file (`c.train.num_step = 3`) trained with the
  old value, where the same typo as an override was refused; open sections
  (`data.list_pad`) and the generator's own keys stay free."""
  path = tmp_path / "variant.py"
  path.write_text(
      "from metarec_jax import config_defaults\n"
      "def get_config():\n"
      "  c = config_defaults.get_config()\n"
      "  c.data.list_pad.mood = 2\n"
      "  c.data.synthetic.zip_vocab = 5\n"
      "  c.train.num_step = 3\n"
      "  return c\n")
  with pytest.raises(InputError) as e:
    config_io.load_config_file(str(path))
  assert e.value.message == (
      f"{path}: unknown config key 'train.num_step'; did you mean"
      " train.num_steps or train.warmup_steps or train.schedule_steps?")
  path.write_text(path.read_text().replace("  c.train.num_step = 3\n", ""))
  config = config_io.load_config_file(str(path))
  assert config.data.list_pad.mood == 2


@pytest.mark.parametrize("overrides, message", [
    (["--config.meta.msl_weights=(1.0,)"],
     "meta.msl_weights has one weight per inner step (meta.inner_steps)"),
    # Zero-size rates: every save failed, after the first step.
    (["--config.meta.algorithm=mamlpp", "--config.meta.inner_steps=0"],
     "meta.algorithm=mamlpp learns a rate per inner step"),
    (["--config.meta.algorithm=reptile", "--config.meta.msl_weights=(1.0,1.0)"],
     "meta.msl_weights weighs the query loss after each inner step of"),
    (["--config.meta.algorithm=metric"],
     "the encoding algorithms (metric, amortised, hybrid) read a model's"
     " support rows, and the baseline-anchored models"),
])
def test_relations_found_only_after_building_the_store_are_checked_first(
    tmp_path, overrides, message):
  """They were one-line errors, but after the task store was written into
  the work directory (minutes on a large dataset, and a folder left)."""
  workdir = tmp_path / "run"
  out = metarec("train", f"--config={config_path('tiny')}",
                f"--workdir={workdir}", *overrides)
  assert_one_line_error(out, message)
  assert not workdir.exists()


def test_a_tuple_without_quotes_names_its_bad_element():
  """`1,nan` became ('1', 'nan') and the error blamed the valid '1'."""
  config = config_io.load_config_file(config_path("tiny"))
  config_io.apply_overrides(config, [("meta.msl_weights", "1,nan"),
                                     ("model.hidden", "16,x"),
                                     ("data.generic.categorical", "a,b")])
  assert config.meta.msl_weights[0] == 1
  assert math.isnan(config.meta.msl_weights[1])
  assert tuple(config.model.hidden) == (16, "x")
  assert tuple(config.data.generic.categorical) == ("a", "b")
  with pytest.raises(InputError, match=r"\(got nan\)"):
    config_reference.validate(config)
  # Tuples of text stay text, numbers-looking or not (the review found
  # `NA,-1` and `genre,1990` refused).
  config = config_io.load_config_file(config_path("tiny"))
  config_io.apply_overrides(config, [("data.generic.missing", "NA,-1"),
                                     ("data.generic.categorical",
                                      "genre,1990"),
                                     ("model.exclude_features", "zip,inf")])
  assert tuple(config.data.generic.missing) == ("NA", "-1")
  assert tuple(config.data.generic.categorical) == ("genre", "1990")
  assert tuple(config.model.exclude_features) == ("zip", "inf")
  config_reference.validate(config)


@pytest.mark.parametrize("key", ["data.generic.delimiter",
                                 "data.generic.list_sep"])
def test_a_space_or_a_tab_is_a_separator_and_only_empty_is_refused(key):
  """A tab (as a config file writes "\\t") or a space was refused as "must
  be non-empty text", and a space-separated log could not be read."""
  config = config_io.load_config_file(config_path("tiny"))
  name = key.rsplit(".", 1)[1]
  for value in (" ", "\t", "\\t", "::"):  # "\\t": the command line's escape
    config.data.generic[name] = value
    config_reference.validate(config)
  config.data.generic[name] = ""
  with pytest.raises(InputError, match="must be non-empty text"):
    config_reference.validate(config)


def test_encoders_are_refused_only_where_the_anchor_is_in_effect():
  """Implicit-feedback models are never anchored: an encoder there trained
  before the relation, and must still (the review found it refused)."""
  config = config_io.load_config_file(config_path("tiny"))
  config_io.apply_overrides(config, [("meta.algorithm", "amortised")])
  with pytest.raises(InputError, match="encoding algorithms"):
    config_reference.validate(config)
  config_io.apply_overrides(config, [("data.implicit.enabled", "true"),
                                     ("model.loss", "bpr")])
  config_reference.validate(config)


def test_a_config_file_that_exits_is_an_error_naming_it(tmp_path):
  """`sys.exit(3)` in a config file ended the command with status 3 and
  no word."""
  path = tmp_path / "exits.py"
  path.write_text("import sys\nsys.exit(3)\n")
  with pytest.raises(InputError) as e:
    config_io.load_config_file(str(path))
  assert e.value.message == f"{path}: error while loading: SystemExit: 3"


def test_preparing_a_click_log_needs_no_model_keys(tmp_path, capsys):
  """`metarec data prepare` of a click log (implicit, the default
  model.loss=mse) was refused for its model.loss, a key of the model it
  does not build; `train` with the same keys is still refused."""
  import datafiles  # pylint: disable=g-import-not-at-top
  datafiles.write(str(tmp_path / "clicks.csv"),
                  "user,item\nu1,a\nu1,b\nu2,a\nu3,c\n")
  keys = [f"--config.data.root={tmp_path}", "--config.data.name=generic",
          "--config.data.generic.ratings=clicks.csv",
          "--config.data.generic.rating_col=",
          "--config.data.implicit.enabled=true"]
  status, err = run_cli(capsys, "data", "prepare", TINY, *keys,
                        f"--out={tmp_path / 'store'}")
  assert status == 0, err
  assert (tmp_path / "store" / "manifest.json").exists()
  workdir = tmp_path / "run"
  status, err = run_cli(capsys, "train", TINY, f"--workdir={workdir}", *keys)
  assert status == 2
  assert err.strip().splitlines() == [
      "metarec train: error: implicit feedback (data.implicit.enabled=true)"
      " trains a ranking loss: model.loss (and model.query_loss, if set)"
      " bce, bpr or softmax; a rating loss on its 1/0 labels diverges in"
      " the inner loop (model.loss='mse', model.query_loss='',"
      " data.implicit.enabled=True)"]
  assert not workdir.exists()
  # A data-only relation still holds for prepare.
  status, err = run_cli(capsys, "data", "prepare", TINY, *keys,
                        "--config.data.implicit.threshold=4",
                        f"--out={tmp_path / 'other'}")
  assert status == 2 and "data.generic.rating_col is empty" in err


@pytest.mark.parametrize("teacher, message", [
    ("{root}/runs/{foo}", "config key distill.teacher='{root}/runs/{foo}':"
     " unknown field {foo}; the only field it may hold is {seed}"),
    ("{root}/runs/{", "config key distill.teacher='{root}/runs/{': Single"
     " '{' encountered in format string"),
    ("{root}/missing-{seed}", "config key distill.teacher='{root}/missing-0':"
     " no config.json there: not the work directory of a `metarec train`"
     " run"),
])
def test_a_bad_distillation_teacher_is_one_line_and_leaves_no_workdir(
    tmp_path, teacher, message):
  """A `{field}` other than `{seed}` was a KeyError traceback, and a path
  without a run was refused only after the student's work directory (its
  task store and lock) had been written."""
  workdir = tmp_path / "student"
  teacher = teacher.replace("{root}", str(tmp_path))
  out = metarec("train", TINY, f"--workdir={workdir}",
                f"--config.distill.teacher={teacher}")
  assert_one_line_error(out, message.replace("{root}", str(tmp_path)))
  assert not workdir.exists()


def test_distillation_on_implicit_feedback_is_refused_before_anything(
    tmp_path):
  """The teacher's predictions were blended into the 1/0 labels: on the
  test bed's tiny implicit run 60 of a batch's 160 query positives became
  negatives (blended label <= 0.5) and BCE got labels from -0.4 to 1.4."""
  teacher = tmp_path / "teacher"
  teacher.mkdir()
  (teacher / config_io.WORKDIR_CONFIG).write_text("{}")
  workdir = tmp_path / "student"
  out = metarec("train", TINY, f"--workdir={workdir}",
                "--config.data.implicit.enabled=true",
                "--config.model.loss=bce",
                f"--config.distill.teacher={teacher}")
  assert_one_line_error(out, "distill.teacher blends the teacher's predicted"
                        " ratings into the query ratings; on implicit"
                        " feedback they are 1/0 labels")
  assert not workdir.exists()


def test_an_implicit_teacher_is_refused(tmp_path):
  """A rating student of an implicit teacher blended its logits into the
  ratings."""
  import jax  # pylint: disable=g-import-not-at-top
  from metarec_jax import experiment, runtime  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import distill  # pylint: disable=g-import-not-at-top
  student = config_io.complete(config_io.load_config_file(
      config_path("tiny")))
  teacher = config_io.complete(config_io.load_config_file(
      config_path("tiny")))
  teacher.data.implicit.enabled = True
  teacher.model.loss = "bce"
  (tmp_path / "teacher").mkdir()
  config_io.write_workdir_config(str(tmp_path / "teacher"), teacher)
  student.distill.teacher = str(tmp_path / "teacher")
  exp = experiment.build(student, str(tmp_path / "student"))
  with pytest.raises(InputError, match="the teacher is an implicit-feedback"
                     " run: its scores are logits"):
    distill.load(student, exp, runtime.make_mesh(1, jax.devices()[:1]))


@pytest.mark.parametrize("key, value", [("seed", 1), ("new_user_fraction",
                                                       0.3)])
def test_a_teacher_of_another_split_is_refused(tmp_path, key, value):
  """A teacher trained with another eval.seed was accepted: it had learned
  from the users the student's evaluation holds out, and the student was
  trained toward its predictions."""
  import jax  # pylint: disable=g-import-not-at-top
  from metarec_jax import experiment, runtime  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import distill  # pylint: disable=g-import-not-at-top
  tiny = lambda: config_io.complete(config_io.load_config_file(
      config_path("tiny")))
  student, teacher, same = tiny(), tiny(), tiny()
  setattr(teacher.eval, key, value)
  for name, config in (("teacher", teacher), ("same", same)):
    experiment.build(config, str(tmp_path / name))
    config_io.write_workdir_config(str(tmp_path / name), config)
  exp = experiment.build(student, str(tmp_path / "student"))
  mesh = runtime.make_mesh(1, jax.devices()[:1])
  student.distill.teacher = str(tmp_path / "teacher")
  with pytest.raises(InputError, match=(
      f"the teacher was trained on another split of the data \\(eval.{key}="
      f"{value!r} there")):
    distill.load(student, exp, mesh)
  student.distill.teacher = str(tmp_path / "same")  # passes the check
  with pytest.raises(InputError, match="no checkpoint"):
    distill.load(student, exp, mesh)


@pytest.mark.parametrize("override, value, message", [
    ("data.buckets=(16,x)", (16, "x"), "(got 'x')"),
    ("data.buckets=[8, x]", (8, "x"), "(got 'x')"),
    ("meta.msl_weights=(1,nan)", (1, math.nan), "(got nan)"),
    ("data.generic.categorical=(maker,country)", ("maker", "country"), None),
])
def test_a_bracketed_tuple_without_quotes_reads_as_its_elements(
    override, value, message, tmp_path, capsys):
  """`(16,x)` was split as `'(16'` and `'x)'`: the error blamed the valid
  first element (`got '(16'`), and names of text tuples kept a bracket."""
  key, text = override.split("=", 1)
  config = config_io.apply_overrides(
      config_io.load_config_file(config_path("tiny")), [(key, text)])
  section, name = key.rsplit(".", 1)
  got = config_io.flat(config)[key]
  assert len(got) == len(value) and all(
      (g != g and v != v) or g == v for g, v in zip(got, value)), (section,
                                                                  name, got)
  if message is not None:
    workdir = tmp_path / "new"
    status, err = run_cli(capsys, "train", TINY, f"--workdir={workdir}",
                          f"--config.{override}")
    assert status == 2 and message in err, err
    assert not workdir.exists()


def test_an_evaluation_batch_holds_no_more_tasks_than_there_are(tmp_path):
  """`eval.batch_tasks` far above the tasks padded every batch to it: 24
  tasks in batches of 100000 took 57 s and 7 GB instead of 4 s."""
  from metarec_jax import experiment, runtime  # pylint: disable=g-import-not-at-top
  from metarec_jax.eval.evaluate import Evaluator  # pylint: disable=g-import-not-at-top
  config = config_io.load_config_file(config_path("tiny"))
  config.eval.batch_tasks = 100000
  exp = experiment.build(config, str(tmp_path), log=lambda *a: None)
  mesh = runtime.make_mesh()
  n = mesh.devices.size
  most = max(len(t) for t in exp.split.scenarios.values())
  assert 0 < most < 100000
  assert Evaluator(exp, mesh).batch_tasks == math.ceil(most / n) * n
  few = {"UC": exp.split.scenarios["W"].subset(np.arange(5))}
  assert Evaluator(exp, mesh, tasksets=few).batch_tasks == 2 * n
  # Below the tasks there are, eval.batch_tasks is kept.
  assert Evaluator(exp, mesh, batch_tasks=n).batch_tasks == n


def test_a_model_without_support_rows_is_named_to_an_encoder(tmp_path,
                                                              monkeypatch):
  """A model whose loss has no `rows` (a newcomer's, without
  `featurize`) was told to set model.anchor=false, which it already had:
  the anchored models are refused by the config's rules before."""
  from metarec_jax import experiment, meta  # pylint: disable=g-import-not-at-top

  def no_rows(loss_fn):
    raise ValueError("no rows")

  monkeypatch.setattr(meta.encoder, "rows_of", no_rows)
  config = config_io.load_config_file(config_path("tiny"))
  config_io.apply_overrides(config, [("meta.algorithm", "metric"),
                                     ("model.anchor", "false")])
  with pytest.raises(InputError, match="^meta.algorithm=metric encodes a"
                     " model's support rows: model.name=melu's loss has no"
                     " `rows`"):
    experiment.build(config, str(tmp_path))
