"""The encoding learners end to end: train a step, export, serve; and a
student distilled from a teacher's work directory."""

import logging
import os

import jax
import numpy as np
import pytest

from cli_run import metarec_here
from conftest import config_path
from test_export import core_predictions, file_support, store_rows, write_file
from metarec_jax import config_io, experiment, export, runtime
from metarec_jax.errors import InputError
from metarec_jax.train import train_and_evaluate
from metarec_jax.workdir.restore import load_state

# One step of one support width (the tiny config's max_support): the
# fewest programs to compile per learner.
ONE_STEP = [("train.num_steps", "1"), ("train.eval_every_steps", "0"),
            ("checkpoint.every_steps", "1"), ("log.every_steps", "1"),
            ("log.histogram_every_steps", "0"), ("data.buckets", "(16,)")]


def train(workdir, variant, *extra):
  config = config_io.load_config_file(
      f"{config_path('learners')}:{variant}@tiny")
  config_io.apply_overrides(config, ONE_STEP + list(extra))
  train_and_evaluate(config, str(workdir))
  return str(workdir)


def check_export_and_serving(workdir, tmp_path, encoder=True):
  """Export two users; `load(...)` predicts, adapts and recommends exactly
  as the core's own adaptation (with the checkpoint's encoder, which the
  export carries, where `encoder`). Returns the meta-parameters."""
  exp = experiment.build(config_io.read_workdir_config(workdir), workdir)
  meta_params = jax.device_get(
      load_state(exp, workdir, runtime.make_mesh()).params)
  path = write_file(tmp_path / "r.csv", exp, *store_rows(exp, [4, 5]))
  out = str(tmp_path / "export")
  export.export_workdir(workdir, path, out, top_k=3)
  loaded = export.load(out)
  if encoder:
    assert "encoder" in meta_params["inner"]
    inner = loaded.manifest["params"]["inner"]
    assert any(p.startswith("encoder/") for p in inner)
  items, ratings = file_support(path, exp, 4)
  query = np.arange(30)
  want = core_predictions(exp, meta_params, 4, items, ratings, query)
  ids = exp.store.item_ids[query]
  np.testing.assert_allclose(loaded.predict(4, ids), want, rtol=1e-5,
                             atol=1e-5)
  pairs = list(zip(exp.store.item_ids[items].tolist(), ratings.tolist()))
  user = loaded.adapt(pairs, user_id=4)
  np.testing.assert_allclose(user.predict(ids), want, rtol=1e-5, atol=1e-5)
  assert len(loaded.recommend(4, 3)) == 3
  # An unknown user is served from the meta-parameters: finite ratings.
  assert np.isfinite(loaded.predict(10 ** 9, ids)).all()
  return meta_params


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
  return train(tmp_path_factory.mktemp("hybrid"), "hybrid")


def test_hybrid_exports_and_serves(hybrid_run, tmp_path):
  check_export_and_serving(hybrid_run, tmp_path)


def test_metric_on_idemb_exports_and_serves(tmp_path):
  check_export_and_serving(
      train(tmp_path / "metric", "metric", ("model.name", "idemb")), tmp_path)


@pytest.mark.parametrize("variant", ["distilled", "distilled_amortised"])
def test_a_student_distils_from_a_teacher(hybrid_run, tmp_path, caplog,
                                          variant):
  """The metric (`distilled`) and the amortised student."""
  with caplog.at_level(logging.INFO, logger="metarec"):
    student = train(tmp_path / "student", variant,
                    ("distill.teacher", hybrid_run), ("distill.weight", "0.3"))
  algorithm = config_io.read_workdir_config(student).meta.algorithm
  assert algorithm == {"distilled": "metric",
                       "distilled_amortised": "amortised"}[variant]
  assert f"distilling from {hybrid_run} (step 1, weight 0.3)" in caplog.text
  # Which of the teacher's checkpoints, said of the teacher, with no hint
  # of a --step flag that train does not take.
  chose = [r.getMessage() for r in caplog.records
           if "checkpoint" in r.getMessage() and "using" in r.getMessage()]
  assert chose and all(m.startswith(f"the teacher {hybrid_run}: using")
                       and "--step" not in m for m in chose), chose
  # The teacher's targets are compiled in the warm-up, not at the first
  # batch (which warned that a batch shape escaped the buckets).
  assert "after the warm-up" not in caplog.text
  check_export_and_serving(student, tmp_path)
  with pytest.raises(InputError, match="distill.weight"):
    train(tmp_path / "bad", "distilled", ("distill.teacher", hybrid_run),
          ("distill.weight", "1.5"))


@pytest.mark.parametrize("name", ["melu", "idemb"])
def test_an_encoder_on_the_anchored_model_is_a_one_line_error(tmp_path, name):
  """The anchored models have no support rows for an encoder (it would
  modulate the baseline's own user bias): `metarec train` says so before
  compiling anything, in one line with status 2, not as a traceback from
  inside the first trace."""
  out = metarec_here("train", f"--config={config_path('tiny')}",
                     f"--workdir={tmp_path / 'w'}",
                     "--config.meta.algorithm=metric",
                     f"--config.model.name={name}")
  assert out.returncode == 2, out.stderr
  # (after the log of the store it built: the data decides whether the
  # model is anchored, implicit feedback never is)
  assert "model.anchor=false" in out.stderr.strip().splitlines()[-1]
  assert "Traceback" not in out.stderr


def test_a_resumed_student_distils_from_the_teacher_checkpoint_it_began_with(
    tmp_path, caplog):
  """The teacher trained on after the student started: the resumed student
  moved to the teacher's newer checkpoint (step 1 -> 2) with an info line
  only. Each student checkpoint records the teacher's step and parameters
  (`Teacher.pin`): a resume goes on from that checkpoint, and where the
  teacher no longer holds it (removed, damaged, other parameters at that
  step), says so and goes on from the teacher's default checkpoint (here
  its newest: it never validates)."""
  import glob  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  teacher = str(tmp_path / "teacher")

  def teach(steps, seed="0"):
    train(teacher, "hybrid", ("train.num_steps", str(steps)),
          ("train.eval_every_steps", "-1"), ("checkpoint.keep", "3"),
          ("train.seed", seed))

  teach(1)
  student = train(tmp_path / "student", "distilled",
                  ("distill.teacher", teacher))
  teach(2)  # a newer checkpoint beside step 1

  def resume(steps):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="metarec"):
      train(student, "distilled", ("distill.teacher", teacher),
            ("train.num_steps", str(steps)))
    record = ckpt_lib.Checkpointer(student, read_only=True).read_record(steps)
    return caplog.text, record["teacher"]["step"]

  text, pinned = resume(2)
  assert f"distilling from {teacher} (step 1, weight" in text and pinned == 1
  assert "WARNING" not in text, text
  # Said of the teacher, with no hint of a --step flag train does not take.
  assert f"the teacher {teacher}: using the checkpoint of step 1\n" in text
  warned = ("this run was distilled toward a teacher checkpoint (step {})"
            f" that {teacher} no longer holds ({{}}): distilling from its"
            " default checkpoint from here on")
  # Damaged: it was a dead end (load_state reads no other step).
  for array in glob.glob(os.path.join(teacher, "checkpoints", "1", "state",
                                      "d", "*")):
    with open(array, "r+b") as f:
      f.seek(os.path.getsize(array) // 2)
      f.write(b"\xff" * 64)
  text, pinned = resume(3)
  line, = [l for l in text.splitlines() if "no longer holds" in l]
  assert warned.format(1, "its step 1 cannot be read: ").split("(its")[0] in (
      line) and "the checkpoint of step 1 cannot be read" in line, line
  assert line.endswith("): distilling from its default checkpoint from here"
                       " on")
  assert f"distilling from {teacher} (step 2, weight" in text and pinned == 2
  # Removed (a teacher keeps checkpoint.keep of its own).
  teach(3)
  shutil.rmtree(os.path.join(teacher, "checkpoints", "2"))
  text, pinned = resume(4)
  assert warned.format(2, "its checkpoints: 1, 3") in text
  assert f"distilling from {teacher} (step 3, weight" in text and pinned == 3
  # Trained again from another seed: step 3 holds other parameters, and
  # the default (step 4) is taken, not step 3.
  shutil.rmtree(teacher)
  teach(4, seed="7")
  text, pinned = resume(5)
  assert warned.format(3, "its step 3 holds other parameters: another"
                       " teacher, or one trained again") in text
  assert f"distilling from {teacher} (step 4, weight" in text and pinned == 4


def _two_students(workdir, teachers):
  """A student run of 2 processes, process i distilling from teachers[i];
  returns [(returncode, stderr)]."""
  from procs import run_together  # pylint: disable=g-import-not-at-top
  from test_multiprocess import free_port  # pylint: disable=g-import-not-at-top
  port = free_port()
  return run_together([(
      ("train", f"--config={config_path('learners')}:distilled@tiny",
       f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in ONE_STEP),
       f"--config.distill.teacher={teacher}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}", "--join_timeout=60"), {})
                       for i, teacher in enumerate(teachers)],
                      timeout=240), port


def test_a_student_of_two_processes_distils(hybrid_run, tmp_path):
  """Each process on its own host's copy of the teacher. A distilling run
  of several processes failed in every case: building the teacher's
  experiment set the coordination service's key of the task store check
  a second time (ALREADY_EXISTS, exit 1)."""
  import shutil  # pylint: disable=g-import-not-at-top
  copy = str(tmp_path / "copy")
  shutil.copytree(hybrid_run, copy)
  ends, _ = _two_students(tmp_path / "student", (hybrid_run, copy))
  for rc, err in ends:
    assert rc == 0, err
  assert f"distilling from {hybrid_run} (step 1, weight" in ends[0][1]
  assert os.path.isdir(tmp_path / "student" / "checkpoints" / "1")


def test_processes_reading_different_teachers_stop(hybrid_run, tmp_path):
  """distill.teacher may be each host's own path (a copy of the teacher's
  folder): every process loaded the teacher itself, and where the copies
  differed each would distil toward its own, silently (helper R2).
  Process 1 now names both checkpoints and every process stops."""
  other = train(tmp_path / "other", "hybrid", ("train.seed", "1"))
  (rc1, err1), (rc0, err0) = reversed(
      _two_students(tmp_path / "student", (hybrid_run, other))[0])
  problem = ("process 1 distils from the teacher's step 1 (parameters"
             " SHA-256 ")
  assert rc1 == 2, err1
  last = err1.strip().splitlines()[-1]
  assert last.startswith(f"metarec train: error: {other}: {problem}"), err1
  assert "process 0 from its step 1 (" in last
  assert "every process must read the same teacher checkpoint" in last
  assert rc0 == 2, err0
  # (its own line may be followed by one its main thread logged meanwhile)
  assert ("metarec train: error: process 0: process 1 of the run at"
          " 127.0.0.1:" in err0 and f" stopped: {other}: {problem}" in err0
          ), err0
