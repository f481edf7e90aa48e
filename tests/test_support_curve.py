"""Query MAE against support size: the cut of support sets and the record."""

import json
import os

import numpy as np
import pytest

from metarec_jax.data.splits import TaskSet
from metarec_jax.eval import support_curve


def tasks_with(support_sizes, query=2):
  """Tasks whose support rows come first, then `query` query rows."""
  users, offsets, items, ratings, is_query = [], [0], [], [], []
  for t, n in enumerate(support_sizes):
    users.append(10 + t)
    items += list(range(100 * t, 100 * t + n + query))
    ratings += [float(1 + i % 5) for i in range(n + query)]
    is_query += [False] * n + [True] * query
    offsets.append(offsets[-1] + n + query)
  return TaskSet(np.array(users, np.int32), np.array(offsets, np.int64),
                 np.array(items, np.int32), np.array(ratings, np.float32),
                 np.array(is_query))


def rows(tasks, i):
  lo, hi = tasks.offsets[i], tasks.offsets[i + 1]
  return (tasks.items[lo:hi], tasks.ratings[lo:hi], tasks.is_query[lo:hi])


def test_cut_keeps_k_support_ratings_and_every_query_rating():
  tasks = tasks_with([3, 5, 9])
  cut = support_curve.truncate_support(tasks, 4, seed=0)
  np.testing.assert_array_equal(cut.users, [11, 12])  # support >= 4 only
  np.testing.assert_array_equal(cut.support_sizes(), [4, 4])
  for new, old in ((0, 1), (1, 2)):
    items, ratings, is_query = rows(cut, new)
    o_items, o_ratings, o_query = rows(tasks, old)
    np.testing.assert_array_equal(items[is_query], o_items[o_query])
    assert set(items[~is_query]) <= set(o_items[~o_query])
    rating_of = dict(zip(o_items, o_ratings))
    assert all(rating_of[i] == r for i, r in zip(items, ratings))


def test_cuts_are_nested_seeded_and_random():
  tasks = tasks_with([40] * 6)
  def support(k, seed):
    cut = support_curve.truncate_support(tasks, k, seed=seed)
    return [set(rows(cut, i)[0][~rows(cut, i)[2]]) for i in range(len(cut))]
  for small, big in zip(support(4, 0), support(8, 0)):
    assert small < big
  assert support(8, 0) == support(8, 0)
  assert support(8, 0) != support(8, 1)
  # Not simply the first ratings in item order.
  firsts = [set(rows(tasks, i)[0][:8]) for i in range(len(tasks))]
  assert support(8, 0) != firsts


def test_sizes_are_powers_of_two_up_to_the_largest_support():
  assert support_curve.sizes_for(tasks_with([3, 9])) == (1, 2, 4, 8)
  assert support_curve.sizes_for(tasks_with([16])) == (1, 2, 4, 8, 16)
  assert support_curve.sizes_for(tasks_with([])) == ()
  assert not len(support_curve.truncate_support(tasks_with([3]), 4, seed=0))


def test_training_writes_the_validation_curve(tiny_metasgd_run):
  path = os.path.join(tiny_metasgd_run, "eval", "support_curve.json")
  with open(path) as f:
    record = json.load(f)
  assert record["step"] == 6
  assert list(record["scenarios"]) == ["val"]
  c = record["scenarios"]["val"]
  assert c["k"][:3] == [1, 2, 4]
  assert c["tasks"] == sorted(c["tasks"], reverse=True)
  for key in ("mae", "mae_unadapted", "item_mean_user_bias", "mae_gap_se"):
    assert len(c[key]) == len(c["k"])
    assert all(0 < v < 5 for v in c[key]), key
  # The unadapted model ignores the support set: at k=1 and k=2 the tasks
  # are the same (every task has >= 3 support ratings), so is its MAE.
  assert c["tasks"][0] == c["tasks"][1]
  assert c["mae_unadapted"][0] == pytest.approx(c["mae_unadapted"][1])
  # The adapted model sees the cut support from the validated fewest
  # ratings that count on (`model.warm_min_support`, fitted by the same
  # validation); below it, it is the unadapted model. The baseline's user
  # bias sees every cut.
  with open(os.path.join(tiny_metasgd_run, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  least = [r["val/warm_min_support"] for r in rows
           if r["step"] == 6 and "val/warm_min_support" in r][0]
  for i, k in enumerate(c["k"]):
    if k < least:
      assert c["mae"][i] == pytest.approx(c["mae_unadapted"][i]), k
  first = [i for i, k in enumerate(c["k"]) if k >= least][0]
  assert c["mae"][first] != pytest.approx(c["mae_unadapted"][first])
  assert c["item_mean_user_bias"][0] != c["item_mean_user_bias"][1]


def test_eval_of_a_work_directory_it_cannot_write_still_reports(
    tiny_metasgd_run, tmp_path):
  """A read-only copy of a run (an archive, another user's): `eval` failed
  with "Permission denied" on its TensorBoard folder and printed nothing.
  Here the two places it adds to are files, which no user (root included)
  can write into."""
  import shutil  # pylint: disable=g-import-not-at-top
  from cli_run import last_json, metarec_here  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(tiny_metasgd_run, workdir)
  shutil.rmtree(workdir / "tensorboard" / "eval", ignore_errors=True)
  (workdir / "tensorboard" / "eval").write_text("")
  shutil.rmtree(workdir / "eval")
  (workdir / "eval").write_text("")
  out = metarec_here("eval", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr
  report = last_json(out)
  assert report["scenarios"]["W"]["tasks"] > 0
  unwritten = [w for w in report["warnings"]
               if "not added to the work directory" in w]
  assert len(unwritten) == 2, report["warnings"]
  assert unwritten[0].startswith("the evaluation's TensorBoard scalars")
  assert unwritten[1].startswith("the support curve")
  # Each said once on stderr (it was logged where it happened and again
  # with the evaluation's warnings).
  for line in unwritten:
    assert out.stderr.count(line) == 1, out.stderr


def test_an_eval_under_overrides_leaves_the_runs_records(tiny_metasgd_run,
                                                         tmp_path):
  """A what-if (`--config.meta.inner_steps=0`) replaced the run's support
  curve with its own, unmarked, and added a second value at the same step
  to TensorBoard's `eval` run; an override that changes nothing writes them
  as a plain eval does."""
  import shutil  # pylint: disable=g-import-not-at-top
  from cli_run import metarec_here  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(tiny_metasgd_run, workdir)
  shutil.rmtree(workdir / "tensorboard" / "eval", ignore_errors=True)
  shutil.rmtree(workdir / "eval", ignore_errors=True)
  out = metarec_here("eval", f"--workdir={workdir}",
                     "--config.meta.inner_steps=0")
  assert out.returncode == 0, out.stderr
  assert "this evaluation is a what-if (--config.meta.inner_steps)" in (
      out.stderr)
  assert not (workdir / "eval").exists()
  assert not (workdir / "tensorboard" / "eval").exists()
  # Overrides that change nothing, or only how the evaluation runs (a lower
  # eval.batch_tasks is how one that ran out of memory gets done), write
  # them as a plain eval does.
  same = json.load(open(workdir / "config.json"))["config"]["meta"][
      "inner_steps"]
  out = metarec_here("eval", f"--workdir={workdir}",
                     f"--config.meta.inner_steps={same}",
                     "--config.eval.batch_tasks=4")
  assert out.returncode == 0, out.stderr
  assert (workdir / "eval" / "support_curve.json").exists()
  assert (workdir / "tensorboard" / "eval").exists()


def test_eval_warns_where_the_support_curve_loses(tiny_metasgd_run,
                                                  tmp_path, monkeypatch):
  """eval's warnings carry the support curve's (`verdicts.curve_warnings`)
  of the record it has just evaluated: here one made to lose at k=1."""
  import shutil  # pylint: disable=g-import-not-at-top
  from metarec_jax.eval import run  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(tiny_metasgd_run, workdir)
  real = support_curve.evaluate

  def losing(*args, **kwargs):
    record = real(*args, **kwargs)
    c = record["scenarios"]["W"]
    c.update(tasks=[60] * len(c["k"]), mae_gap_se=[0.0] * len(c["k"]))
    c["mae"][0] = c["item_mean_user_bias"][0] + 0.05
    return record

  monkeypatch.setattr(support_curve, "evaluate", losing)
  report = run.evaluate_workdir(str(workdir))
  lines = [w for w in report["warnings"] if "support rating(s)" in w]
  assert len(lines) == 1 and lines[0].startswith("W: cut to 1"), lines
