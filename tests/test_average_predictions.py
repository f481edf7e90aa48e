"""`tools/average_predictions.py`: the metrics of several runs' averaged
query predictions."""

import contextlib
import importlib.util
import io
import json
import os
import shutil
import sys

import numpy as np
import pytest

from cli_run import last_json, metarec
from conftest import ROOT
from metarec_jax.eval import predictions_file


def load_tool():
  spec = importlib.util.spec_from_file_location(
      "average_predictions_tool",
      os.path.join(ROOT, "tools", "average_predictions.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


tool = load_tool()


def run_tool(*argv):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    tool.main(list(argv))
  return {row["scenario"]: row for row in map(json.loads,
                                               out.getvalue().splitlines())}


def rewrite(folder, change):
  """Rewrites every scenario's predictions file of `folder`: `change(rows)`
  gets and returns the rows (lists of fields) after the header."""
  for name in os.listdir(folder):
    path = os.path.join(folder, name, predictions_file.FILE_NAME)
    if not os.path.exists(path):
      continue
    head, *rows = open(path).read().splitlines()
    rows = change([r.split("\t") for r in rows])
    with open(path, "w") as f:
      f.write("\n".join([head] + ["\t".join(r) for r in rows]) + "\n")


@pytest.fixture(scope="module")
def written(ml1m_tiny_run, tmp_path_factory):
  workdir, _ = ml1m_tiny_run
  folder = tmp_path_factory.mktemp("average") / "a"
  out = metarec("eval", f"--workdir={workdir}", f"--write_tasks={folder}")
  assert out.returncode == 0, out.stderr
  return workdir, str(folder), last_json(out)["scenarios"]


def test_one_run_alone_gives_its_own_report(written):
  workdir, folder, report = written
  rows = run_tool(f"--workdir={workdir}", f"--tasks={folder}")
  assert set(rows) == {n for n, m in report.items() if m["tasks"]} != set()
  for name, row in rows.items():
    assert row["tasks"] == report[name]["tasks"] and row["runs"] == 1
    assert row["average"] == row["first"]
    assert row["ndcg@3_above_first"] == 0.0
    # The file keeps every value exactly (`predictions_file.exact_text`):
    # the same order, so the same nDCG, and the MAE summed in float64 by
    # both (eval's float32 sums differed in the 8th digit).
    for key, value in row["first"].items():
      assert value == pytest.approx(report[name][key], abs=1e-12), key
    base = report[name]["baselines"]["item_mean_user_bias"]
    for key, value in row["baseline"].items():
      assert value == pytest.approx(base[key],
                                    abs=1e-12 if "ndcg" in key else 1e-6), key


def test_the_average_is_the_mean_of_the_runs_predictions(written, tmp_path):
  workdir, folder, report = written
  other = tmp_path / "b"
  shutil.copytree(folder, other)
  # The second run predicts the baseline's ratings.
  rewrite(other, lambda rows: [r[:3] + [r[6]] + r[4:] for r in rows])
  rows = run_tool(f"--workdir={workdir}", f"--tasks={folder},{other}")
  for name, row in rows.items():
    p = predictions_file.read_predictions(
        os.path.join(folder, name, predictions_file.FILE_NAME))
    # The second run's prediction column reads as float32, as a model's.
    second = p["item_mean_user_bias"].astype(np.float32).astype(np.float64)
    mean = (p["prediction"].astype(np.float64) + second) / 2
    assert row["runs"] == 2
    assert row["average"]["mae"] == pytest.approx(
        np.abs(mean - p["rating"]).mean(), abs=1e-9)
    assert row["first"]["mae"] == pytest.approx(report[name]["mae"],
                                                abs=2e-5)
    assert row["ndcg@3_above_baseline"] == pytest.approx(
        row["average"]["ndcg@3"] - row["baseline"]["ndcg@3"])


def test_runs_of_other_tasks_are_refused(written, tmp_path, capsys):
  workdir, folder, _ = written
  other = tmp_path / "b"
  shutil.copytree(folder, other)
  rewrite(other, lambda rows: rows[1:] + rows[:1])
  with pytest.raises(SystemExit) as exit_info:
    run_tool(f"--workdir={workdir}", f"--tasks={folder},{other}")
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1
  assert str(other) in err[0] and "--config.eval.seed" in err[0]


def test_files_of_another_store_are_refused(tmp_path):
  """`--workdir` of another dataset: the items it lacks became -1, which
  breaks no tie as `metarec eval` did, and the tool printed numbers of
  its own making with status 0."""
  import types  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  (tmp_path / "W").mkdir()
  (tmp_path / "W" / predictions_file.FILE_NAME).write_text(
      "user\titem\trating\tprediction\titem_mean_user_bias\n"
      "7\t1\t4\t3.5\t3.5\n7\t9\t5\t3.5\t3.5\n")
  store = types.SimpleNamespace(item_ids=np.array(["a", "b"]),
                                user_ids=np.array(["7"]))
  with pytest.raises(InputError, match="2 of its 2 query ratings are of"
                     " users or items that the store of --workdir lacks"):
    tool.scenario_runs([str(tmp_path)], "W", store, 2)
  store.item_ids = np.array(["1", "b"])
  with pytest.raises(InputError, match="1 of its 2 query ratings"):
    tool.scenario_runs([str(tmp_path)], "W", store, 2)
  store.item_ids, store.user_ids = np.array(["1", "9"]), np.array(["u"])
  with pytest.raises(InputError, match="2 of its 2 query ratings"):
    tool.scenario_runs([str(tmp_path)], "W", store, 2)
  store.user_ids = np.array(["7"])
  (run,) = tool.scenario_runs([str(tmp_path)], "W", store, 2)
  assert run["items"].tolist() == [[0, 1]]



def test_no_folder_is_an_input_error(monkeypatch):
  """`--tasks=,` (or an empty value) was an IndexError traceback from
  `scenario_runs`; it is an InputError (`toolkit.run`: one line, status 2)."""
  import types  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  config = types.SimpleNamespace(data=types.SimpleNamespace(query_size=2))
  store = types.SimpleNamespace(rating_range=(1.0, 5.0))
  monkeypatch.setattr(tool.config_io, "read_workdir_config",
                      lambda workdir: config)
  monkeypatch.setattr(tool.prepare, "store_path", lambda data, workdir: "")
  monkeypatch.setattr(tool.store_lib, "open_store", lambda path: store)
  with pytest.raises(InputError, match="--tasks: no folder given"):
    tool.main(["--workdir=w", "--tasks=,"])
