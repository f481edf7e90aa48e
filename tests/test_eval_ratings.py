"""`metarec eval --ratings=FILE --write_tasks=DIR` on a tiny MovieLens run."""

import json
import os
import re

import numpy as np
import pytest

from cli_run import (assert_one_line_error, last_json, metarec,
                     metarec_here)
from conftest import ML1M_NEW_USERS, ML1M_TRAIN_USERS
from metarec_jax.data.convert import ratings_io
from metarec_jax.data import store as store_lib
from metarec_jax.eval import metrics, predictions_file


def file_rows(path, store):
  users, items, ratings, _ = ratings_io.read_ratings(path, store)
  return set(zip(users.tolist(), items.tolist(), ratings.tolist()))


def test_eval_treats_the_users_of_a_ratings_file_as_new(ml1m_tiny_run,
                                                        tmp_path):
  workdir, ratings = ml1m_tiny_run
  tasks_dir = tmp_path / "tasks"
  curve = os.path.join(workdir, "eval", "support_curve.json")
  run_curve = open(curve).read() if os.path.exists(curve) else None
  out = metarec("eval", f"--workdir={workdir}", f"--ratings={ratings}",
                f"--write_tasks={tasks_dir}", "--config.eval.max_tasks=0")
  assert out.returncode == 0, out.stderr
  # The run's support curve (of its own tasks) is not replaced.
  assert "this evaluation is of --ratings" in out.stderr
  assert (open(curve).read() if os.path.exists(curve) else None) == run_curve
  report = last_json(out)
  assert report["step"] == 3
  assert not [w for w in report["warnings"] if "training users" in w]
  scenarios = report["scenarios"]
  for name in ("W", "IC"):
    assert scenarios[name]["tasks"] == 0
    assert scenarios[name]["mae"] is None
    assert scenarios[name]["baselines"]["global_mean"]["mae"] is None
  store = store_lib.open_store(os.path.join(workdir, "store"))
  given = file_rows(ratings, store)
  # One UC task per new user with 13..100 ratings of existing items.
  item_new = dict(zip(store.item_ids.tolist(), store.item_new.tolist()))
  old = {u: sum(1 for uu, i, _ in given if uu == u and not item_new[i])
         for u in ML1M_NEW_USERS}
  expected_uc = sorted(u for u, n in old.items() if 13 <= n <= 100)
  assert scenarios["UC"]["tasks"] == len(expected_uc) > 0
  for name in ("UC", "UIC"):
    m = scenarios[name]
    if not m["tasks"]:
      continue
    for key in ("mae", "rmse", "ndcg@1", "ndcg@3", "mae_unadapted"):
      assert isinstance(m[key], float)
    support = file_rows(tasks_dir / name / "support.dat", store)
    query = file_rows(tasks_dir / name / "query.dat", store)
    assert len(query) == 10 * m["tasks"]
    assert support | query <= given and not support & query
    check_predictions_file(tasks_dir / name, m, query)
    assert {i for _, i, _ in query} <= {
        i for i, new in item_new.items() if new == (name == "UIC")}
    if name == "UC":
      assert sorted({u for u, _, _ in query}) == expected_uc
  summary = json.load(open(tasks_dir / "tasks.json"))
  assert summary["ratings"] == ratings
  assert summary["scenarios"]["UC"]["tasks"] == scenarios["UC"]["tasks"]
  assert open(tasks_dir / "W" / "query.dat").read() == ""
  assert sorted(os.listdir(tmp_path)) == ["tasks"]


def test_a_ratings_file_without_a_task_is_a_warning(ml1m_tiny_run, tmp_path):
  workdir, ratings = ml1m_tiny_run
  few = tmp_path / "few.dat"
  few.write_text("".join(open(ratings).readlines()[:3]))
  out = metarec_here("eval", f"--workdir={workdir}", f"--ratings={few}",
                     "--support_curve=false")
  assert out.returncode == 0, out.stderr
  warning, = last_json(out)["warnings"]
  assert warning.startswith(f"no scenario has a task: no user of {few} has")


def test_write_tasks_of_the_protocol_scenarios(ml1m_tiny_run, tmp_path):
  workdir, _ = ml1m_tiny_run
  out = metarec("eval", f"--workdir={workdir}",
                f"--write_tasks={tmp_path / 'tasks'}")
  assert out.returncode == 0, out.stderr
  report = last_json(out)
  # No warning on a healthy run (orbax's notice of the read-only mode) but
  # the evaluation's own verdicts, which its JSON lists (this tiny run has
  # too few tasks per scenario to compare models).
  warned = [l for l in out.stderr.splitlines()
            if "WARNING" in l or re.match(r"\d\d:\d\d:\d\d W ", l)]
  assert report["warnings"]
  assert len(warned) == len(report["warnings"]), out.stderr
  for line, verdict in zip(warned, report["warnings"]):
    assert line.endswith(verdict), (line, verdict)
  store = store_lib.open_store(os.path.join(workdir, "store"))
  for name in ("W", "UC", "IC", "UIC"):
    n = report["scenarios"][name]["tasks"]
    path = tmp_path / "tasks" / name / "query.dat"
    if n:
      users, _, _, _ = ratings_io.read_ratings(path, store)
      assert len(users) == 10 * n
      assert set(users.tolist()) <= set(range(1, ML1M_TRAIN_USERS + 1))
      check_predictions_file(tmp_path / "tasks" / name, report["scenarios"][
          name], query=file_rows(path, store))
  assert report["scenarios"]["W"]["tasks"] > 0
  written = json.load(open(tmp_path / "tasks" / "tasks.json"))
  assert written["step"] == 3
  # The files hold no times: their format names none (it named the
  # store's time column, as if they had one).
  assert ratings_io.store_format(store).timestamp is not None
  assert written["format"]["timestamp"] is None


def check_predictions_file(folder, scenario, query):
  """The predictions file holds the query ratings, and the report's metrics
  (model and baselines) come back when recomputed from it alone."""
  p = predictions_file.read_predictions(folder / "predictions.tsv")
  rows = set(zip(p["user"].astype(int).tolist(), p["item"].astype(int)
                 .tolist(), p["rating"].tolist()))
  assert rows == query
  for column in ("prediction", "item_mean_user_bias"):  # what nDCG ranks
    unclipped = p[predictions_file.unclipped_column(column)]
    assert (np.clip(unclipped, 1, 5) == p[column]).all()
  n = scenario["tasks"]
  true = p["rating"].reshape(n, 10)
  mask = np.ones_like(true, bool)
  for column, expected in (
      ("prediction", scenario),
      ("unadapted", {"mae": scenario["mae_unadapted"]}),
      ("item_mean_user_bias", scenario["baselines"]["item_mean_user_bias"]),
      ("global_mean", scenario["baselines"]["global_mean"])):
    pred = p[column].reshape(n, 10)
    rank_by = predictions_file.ranked(p, column).reshape(n, 10)
    got = metrics.summary(pred, true, mask, rank_by=rank_by)
    assert got.keys() & expected.keys()
    for key in got.keys() & expected.keys():
      value = expected[key]
      assert got[key] == pytest.approx(value, abs=2e-5), (column, key)


BAD_RATINGS = {
    "malformed_line": (b"121::1::5\n121::2\n", "new.dat:2: 2 field(s)"),
    "non_numeric_id": (b"121::1::5\nabc::2::3\n",
                       "new.dat:2: user id 'abc' is not an integer"),
    "rating_off_scale": (b"121::1::5\n121::2::0\n",
                         "new.dat:2: rating 0 is not a whole-number rating"),
    "unknown_user": (b"121::1::5\n7000::2::3\n",
                     "new.dat:2: unknown user 7000 (not in the movielens-1m"
                     " data)"),
    "unknown_item": (b"121::1::5\n121::4000::3\n",
                     "new.dat:2: unknown item 4000"),
    "empty_file": (b"", "new.dat: empty file"),
    "latin1_bytes": (b"121::1::5\n121::2::3\xe9\n",
                     "new.dat:2: byte 0xe9 at column 10 is not valid utf-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_RATINGS))
def test_bad_ratings_files_fail_eval_cleanly(ml1m_tiny_run, tmp_path, case):
  workdir, _ = ml1m_tiny_run
  content, message = BAD_RATINGS[case]
  path = tmp_path / "new.dat"
  path.write_bytes(content)
  # One case as a real process, the others in this one (`metarec_here`).
  run = metarec if case == "malformed_line" else metarec_here
  out = run("eval", f"--workdir={workdir}", f"--ratings={path}",
            f"--write_tasks={tmp_path / 'tasks'}")
  assert_one_line_error(out, message)
  assert "data.generic" not in out.stderr  # no such key reads MovieLens
  assert out.stdout == ""
  assert sorted(os.listdir(tmp_path)) == ["new.dat"]


@pytest.mark.parametrize("override,change,detail", [
    ("model.embed_dim=4", "model.embed_dim=8 -> 4",
     "8) there, ("),
    ("model.calibration=none", "model.calibration='median' -> 'none'",
     "the checkpoint has model/median_"),
])
def test_an_override_that_changes_the_model_is_named(ml1m_tiny_run, override,
                                                     change, detail):
  # The checkpoint is fine: the config given is not the run's. This said
  # "holds the parameters of another model (...; a checkpoint of an earlier
  # metarec or another config): train it again in a new --workdir; the
  # other checkpoints: ...; --step=N reads another" (every step holds the
  # same model).
  workdir, _ = ml1m_tiny_run
  out = metarec_here("eval", f"--workdir={workdir}", f"--config.{override}",
                     "--config.eval.catalog_block=64", "--support_curve=false")
  assert_one_line_error(out, f"the overrides change the run's model ({change}"
                        "), and the checkpoint of step 3 holds the run's own (")
  assert detail in out.stderr and "--step" not in out.stderr.splitlines()[-1]


def test_new_user_tasks_need_only_known_users(ml1m_tiny_run):
  workdir, _ = ml1m_tiny_run
  store = store_lib.open_store(os.path.join(workdir, "store"))
  # The new users are in the user table but have no ratings in the store.
  index = ratings_io.lookup(store.user_ids, np.array(list(ML1M_NEW_USERS)))
  assert (index >= 0).all() and (store.counts()[index] == 0).all()


def test_a_file_of_training_users_is_a_warning(ml1m_tiny_run, tmp_path):
  """Their ratings were trained on: the figures look better than a new
  user's would (said by no one before)."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax import config_io, experiment
  workdir, _ = ml1m_tiny_run
  exp = experiment.build(config_io.read_workdir_config(workdir), workdir)
  store = exp.store
  trained = np.flatnonzero(exp.split.train_counts() >= 13)[:5]
  offsets = np.asarray(store.offsets)
  rows = np.concatenate([np.arange(offsets[u], offsets[u + 1])
                         for u in trained])
  owner = np.repeat(np.arange(store.num_users), np.diff(offsets))[rows]
  path = tmp_path / "trained.dat"
  ratings_io.write_ratings(path, np.asarray(store.user_ids)[owner],
                           np.asarray(store.item_ids)[
                               np.asarray(store.items)[rows]],
                           np.asarray(store.ratings)[rows], store)
  out = metarec_here("eval", f"--workdir={workdir}", f"--ratings={path}",
                     "--support_curve=false")
  assert out.returncode == 0, out.stderr
  warned = [w for w in last_json(out)["warnings"] if "training users" in w]
  assert len(warned) == 1, last_json(out)["warnings"]
  assert f"users with tasks in {path} (e.g. user" in warned[0]
  assert "the model was trained on their ratings" in warned[0]


@pytest.mark.parametrize("where, message", [
    ("data.txt", "data.txt: exists and is not a task folder written by"
                 " --write_tasks"),
    ("data.txt/tasks", "--write_tasks: {tmp}/data.txt is a file, not a"
                       " folder"),
])
def test_a_write_tasks_folder_it_cannot_write_is_refused_before_evaluating(
    ml1m_tiny_run, tmp_path, where, message):
  """docs/design.md: a folder --write_tasks may not replace is refused
  before any work. eval refused it after the whole evaluation, and a file
  where a folder above it goes was "File exists", status 1."""
  workdir, _ = ml1m_tiny_run
  (tmp_path / "data.txt").write_text("mine\n")
  out = metarec_here("eval", f"--workdir={workdir}",
                     f"--write_tasks={tmp_path / where}")
  assert_one_line_error(out, message.format(tmp=tmp_path))
  assert "checkpoint" not in out.stderr  # no checkpoint was read
  assert (tmp_path / "data.txt").read_text() == "mine\n"


def test_a_ratings_file_beyond_max_tasks_says_how_many_it_left_out(
    ml1m_tiny_run, caplog):
  # Its users named by the user, some silently left out by the cap.
  import dataclasses  # pylint: disable=g-import-not-at-top
  from metarec_jax import experiment  # pylint: disable=g-import-not-at-top
  from metarec_jax.eval import user_file  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import resume  # pylint: disable=g-import-not-at-top
  workdir, ratings = ml1m_tiny_run
  store = store_lib.open_store(os.path.join(workdir, "store"))
  spec = experiment.protocol_spec(resume.reader_config(workdir, []))
  every = user_file.new_user_tasks(store, ratings,
                                   dataclasses.replace(spec, max_tasks=0))
  assert len(every["UC"]) > 5
  with caplog.at_level("WARNING", logger="metarec"):
    capped = user_file.new_user_tasks(store, ratings,
                                      dataclasses.replace(spec, max_tasks=5))
  assert len(capped["UC"]) == 5
  assert f"{ratings}: UC evaluates 5 of its {len(every['UC'])} tasks (a" \
      " seeded sample: eval.max_tasks=5; --config.eval.max_tasks=0" \
      " evaluates every one)" in caplog.messages


def test_tasks_whose_support_export_would_cut_are_counted(caplog):
  """eval adapts on a task's whole support (the protocol's, up to 90
  ratings), export and serve on the newest data.max_support: a user's
  served predictions differed from the scored ones by up to 0.36 stars,
  with no word."""
  import logging  # pylint: disable=g-import-not-at-top
  from metarec_jax.eval import run  # pylint: disable=g-import-not-at-top
  from test_support_curve import tasks_with as tasks  # pylint: disable=g-import-not-at-top

  with caplog.at_level(logging.INFO, logger="metarec"):
    run._note_long_supports({"W": tasks([3, 20, 40]), "UC": tasks([5])}, 16)
  assert ("W 2 of 3 task(s) adapt on more than data.max_support=16 support"
          " ratings (up to 40)") in caplog.text
  assert "--config.data.max_support=40 or more" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="metarec"):
    run._note_long_supports({"W": tasks([3, 16])}, 16)
  assert "max_support" not in caplog.text
