"""Implicit feedback end to end: train, resume bitwise, eval's ranking JSON."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import config_path
from metarec_jax import config_io
from metarec_jax import eval as eval_lib
from metarec_jax.eval import ranking
from metarec_jax.eval import support_curve
from metarec_jax.train import train_and_evaluate
from metarec_jax.workdir import checkpoint as ckpt_lib


def implicit_config(**train):
  config = config_io.load_config_file(config_path("tiny"))
  config.data.implicit.enabled = True
  config.data.implicit.threshold = 3.0
  config.data.implicit.negatives = 1
  config.data.implicit.sampling = "popularity"
  config.data.implicit.eval_negatives = 20
  config.data.synthetic.min_ratings = 30
  config.data.synthetic.max_ratings = 60
  config.data.buckets = (16,)  # one program per step
  config.model.loss = "bpr"
  config.train.eval_every_steps = -1
  config.checkpoint.every_steps = 3
  # One learning-rate schedule for the straight run and the extended one
  # (an extended run keeps the schedule's length).
  config.train.schedule_steps = 6
  config.train.update(train)
  return config


def saved_state(workdir, step):
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  train_and_evaluate(implicit_config(num_steps=6), workdir)
  return workdir


def test_resume_with_negative_sampling_is_bitwise(straight, tmp_path):
  workdir = str(tmp_path / "resumed")
  train_and_evaluate(implicit_config(num_steps=3), workdir)
  train_and_evaluate(implicit_config(num_steps=6), workdir)
  a, b = saved_state(straight, 6), saved_state(workdir, 6)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_several_input_threads_train_bitwise_as_one(straight, tmp_path):
  # Batches (negatives included) are pure functions of the step, built by
  # several threads and handed over in order: the run must not change, and
  # resuming with another thread count is no config change.
  workdir = str(tmp_path / "threads")
  train_and_evaluate(implicit_config(num_steps=3, input_workers=3), workdir)
  train_and_evaluate(implicit_config(num_steps=6, input_workers=2), workdir)
  a, b = saved_state(straight, 6), saved_state(workdir, 6)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_eval_reports_ranking_metrics_and_baselines(straight):
  report = eval_lib.evaluate_workdir(straight)
  json.dumps(report, allow_nan=False)  # nulls, never NaN
  keys = set(ranking.metric_keys())
  assert {"hr@10", "ndcg@10", "precision@20", "f1@5", "mrr", "auc"} <= keys
  for name, m in report["scenarios"].items():
    assert m["mae"] is None and m["rmse"] is None, name
    r = m["ranking"]
    assert set(r["full"]) == keys and set(r["sampled"]) == keys
    for who in ("popularity", "random"):
      assert set(r["baselines"][who]) == {"full", "sampled"}
      assert set(r["baselines"][who]["full"]) == keys
    if m["tasks"]:
      for value in r["full"].values():
        assert 0.0 <= value <= 1.0
    # New items have no training positives: popularity ties them all and
    # ranks them as the random baseline does (it ranked them by index).
    tied = r["baselines"]["popularity"] == r["baselines"]["random"]
    assert tied == (name in ("IC", "UIC")) or not m["tasks"], name
    if m["tasks"] > 1:  # what a loss to popularity is judged against
      assert 0 < r["popularity_gap_se"] < 1, name
  assert report["scenarios"]["UC"]["tasks"] > 0
  assert report["scenarios"]["IC"]["tasks"] > 0
  table = eval_lib.format_table(report)
  assert "popularity" in table and "sampled" in table
  curve = support_curve.read(straight)["scenarios"]["UC"]
  assert curve["k"][:3] == [1, 2, 4]
  assert len(curve["ndcg@10"]) == len(curve["popularity_ndcg@10"]) == len(
      curve["k"])
  # ... with the error a loss to popularity is weighed against (verdicts).
  assert len(curve["popularity_gap_se"]) == len(curve["k"])
  assert all(0 < se < 1 for se, n in zip(curve["popularity_gap_se"],
                                         curve["tasks"]) if n > 1)


def test_the_support_curve_ranks_as_eval_does_whatever_the_cut(straight):
  """The support items a cut leaves out were candidates labelled negative:
  popularity, which ignores the support, scored nDCG@10 0.2216 at k=1 and
  0.2245 at k=2 against eval's 0.2775 on the same 150 tasks."""
  report = eval_lib.evaluate_workdir(straight)  # writes the curve too
  for name, c in support_curve.read(straight)["scenarios"].items():
    if not c["k"] or c["tasks"][0] != report["scenarios"][name]["tasks"]:
      continue
    popularity = report["scenarios"][name]["ranking"]["baselines"][
        "popularity"]["full"]["ndcg@10"]
    same = [v for v, n in zip(c["popularity_ndcg@10"], c["tasks"])
            if n == c["tasks"][0]]
    assert len(same) >= 2, c
    assert same == pytest.approx([popularity] * len(same)), name


def test_a_model_scoring_items_alike_ranks_as_the_random_baseline(
    straight, monkeypatch):
  """Its ties were broken by item index, the ids' sort order: renaming
  60 items moved a model that scored new items by their features alone
  from 57% below a random ranking to 122% above it (nDCG@10)."""
  from metarec_jax.eval import implicit_eval  # pylint: disable=g-import-not-at-top
  compile_score = implicit_eval.RankingEvaluator.__init__

  def alike(self, *args, **kwargs):
    compile_score(self, *args, **kwargs)
    score = self.score
    self.score = lambda *a: np.zeros_like(np.asarray(score(*a)))

  monkeypatch.setattr(implicit_eval.RankingEvaluator, "__init__", alike)
  report = eval_lib.evaluate_workdir(straight, support_curve=False)
  for name, m in report["scenarios"].items():
    if m["tasks"]:
      r = m["ranking"]
      for how in ("full", "sampled"):
        assert r[how] == r["baselines"]["random"][how], (name, how)


def test_eval_draws_support_negatives_not_knowing_the_query(straight,
                                                            monkeypatch):
  # A task's support negatives may be its held-out positives, as a
  # server's may be what the user clicks next. Drawn knowing them, every
  # support negative was a true one, and on a small catalog nearly the
  # query's candidate negatives: on 50 items clicked at random eval scored
  # nDCG@10 0.334 against random's 0.257.
  # pylint: disable=g-import-not-at-top
  from metarec_jax.data import implicit
  drawn = implicit.support_negatives
  calls = []

  def spy(sampler, users, classes, mask, negatives, seed, held_out=None):
    items, ok = drawn(sampler, users, classes, mask, negatives, seed,
                      held_out)
    calls.append((np.asarray(users), items, ok, held_out, sampler))
    return items, ok

  monkeypatch.setattr(implicit, "support_negatives", spy)
  eval_lib.evaluate_workdir(straight)
  assert calls
  hits = 0
  for users, items, ok, held_out, sampler in calls:
    assert held_out is not None  # empty only for rows of padding
    key = implicit.keys(np.broadcast_to(users[:, None], items.shape)[ok],
                        items[ok], sampler.num_items)
    # Held-out keys are of the row (a task), not of its user.
    rows = np.broadcast_to(np.arange(len(users))[:, None], items.shape)
    held = implicit.contains(held_out, implicit.keys(rows[ok], items[ok],
                                                      sampler.num_items))
    # Otherwise never an item the user interacted with.
    assert not implicit.contains(sampler.interacted, key[~held]).any()
    hits += held.sum()
  assert hits > 0


def test_export_and_serving_rank_unseen_items(straight, tmp_path):
  # pylint: disable=g-import-not-at-top
  from metarec_jax import export
  from metarec_jax.data import store as store_lib
  store = store_lib.open_store(os.path.join(straight, "store"))
  offsets, items = np.asarray(store.offsets), np.asarray(store.items)
  users = [1, 2, 3]
  lines = ["user,item,rating"]
  for u in users:
    for i in items[offsets[u]:offsets[u + 1]][:12]:
      lines.append(f"{store.user_ids[u]},{store.item_ids[i]},5")
  path = tmp_path / "clicks.csv"
  path.write_text("\n".join(lines) + "\n")
  out = str(tmp_path / "export")
  export.export_workdir(straight, str(path), out, top_k=5, chunk_users=4)
  e = export.load(out)
  assert e.implicit is not None and e.implicit.negatives == 1
  # Ratings come on the input's scale, where the threshold lies.
  assert e.rating_range == (1.0, 5.0)
  user = int(store.user_ids[1])
  seen = set(store.item_ids[items[offsets[1]:offsets[2]][:12]].tolist())
  recs = e.recommend(user, 5)
  assert len(recs) == 5 and not seen & {i for i, _ in recs}
  scores = [s for _, s in recs]
  assert scores == sorted(scores, reverse=True)
  # Serving-time adaptation takes bare item ids (positives), repeatably.
  clicked = sorted(seen)[:6]
  a, b = e.adapt(clicked), e.adapt(clicked)
  assert a.support_size == 6
  assert a.recommend(5) == b.recommend(5)
  assert not set(clicked) & {i for i, _ in a.recommend(5)}
  # metarec serve's engine learns an implicit user's clicks (positives, as
  # its {"items": [...]} interactions log them: the top of the scale).
  from metarec_jax.serve import engine as engine_lib
  g = engine_lib.Engine(e, engine_lib.Limits(max_batch=2, max_items=16))
  top = np.float32(e.rating_range[1])
  assert g.learn([(user, e.item_index(clicked),
                   np.full(len(clicked), top))])[0]["support_size"] >= 6
  r = g.recommend([(user, 5)])[0]
  assert r["source"] == "adapted" and len(r["items"]) == 5
  assert not seen & {i for i, _ in r["items"]}
  # The same clicks give the same model at any row of a batch, and as
  # `Export.adapt` (no dependence on who else was in the device call).
  h = engine_lib.Engine(e, engine_lib.Limits(max_batch=2, max_items=16))
  positions = e.item_index(clicked)
  h.learn([("other", positions[:3], np.full(3, top)),
           ("new", positions, np.full(len(clicked), top))])
  g.learn([("new", positions, np.full(len(clicked), top))])
  probe = e.item_index(sorted(set(store.item_ids.tolist()) - seen)[:8])
  np.testing.assert_array_equal(h.predict([("new", probe)])[0]["scores"],
                                g.predict([("new", probe)])[0]["scores"])
  np.testing.assert_allclose(
      g.predict([("new", probe)])[0]["scores"],
      e.adapt(clicked).predict(store.item_ids[probe].tolist()), rtol=1e-6)
  # Over HTTP, an anonymous session of clicks: `/v1/adapt` takes bare
  # items as `/interactions` does (it asked for 1-5 ratings of clicks).
  import httpx
  from test_serve import Server
  server = Server(out, tmp_path / "log", stderr_path=tmp_path / "stderr")
  try:
    server.wait_ready()
    r = httpx.post(server.url + "/v1/adapt",
                   json={"items": [int(i) for i in clicked], "k": 5},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["support_size"] == 6
    want = a.recommend(5)
    assert [x["item"] for x in r.json()["items"]] == [i for i, _ in want]
    np.testing.assert_allclose([x["score"] for x in r.json()["items"]],
                               [sc for _, sc in want], rtol=1e-5)
    r = httpx.post(server.url + "/v1/adapt", timeout=60, json={
        "items": [int(clicked[0])], "ratings": [[int(clicked[0]), 5]]})
    assert r.status_code == 422 and "not both" in r.text
  finally:
    server.stop()


def test_validation_selects_checkpoints_by_full_catalog_ndcg(tmp_path):
  """With validation, the start (popularity, through the prior) is a
  candidate, and every validated checkpoint carries 1 - its validation
  full-catalog nDCG@10: the lowest is the one `eval` uses."""
  workdir = str(tmp_path / "validated")
  config = implicit_config(num_steps=6, eval_every_steps=3)
  config.data.implicit.sampling = "uniform"
  train_and_evaluate(config, workdir)
  logged = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "val/ranking/full/ndcg@10" in record:
        logged[record["step"]] = 1.0 - record["val/ranking/full/ndcg@10"]
  assert 0 in logged and 6 in logged
  reader = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    validated = reader.validated()
    best = reader.best()
  finally:
    reader.close()
  assert validated and set(validated) <= set(logged)
  for step, loss in validated.items():
    assert loss == pytest.approx(logged[step], abs=1e-9)
  assert best[1] == pytest.approx(min(logged.values()), abs=1e-9)


def test_eval_ratings_reads_a_raw_file_as_the_store_was_built(straight,
                                                              tmp_path):
  """`eval --ratings` on an implicit run: a rating below the threshold is
  an interaction, not a positive (it counted as one: other tasks, other
  metrics), and the tasks `--write_tasks` wrote read back as positives
  (they were written as 1, below the threshold of 3)."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax import experiment, runtime
  from metarec_jax.data import implicit
  from metarec_jax.data import store as store_lib
  from metarec_jax.eval.evaluate import Evaluator
  written = tmp_path / "tasks"
  own = eval_lib.evaluate_workdir(straight, write_tasks=str(written),
                                  support_curve=False)["scenarios"]
  positives = []
  for scenario in ("UC", "UIC"):
    for part in ("support", "query"):
      head, *rows = (written / scenario / f"{part}.csv").read_text(
          ).splitlines()
      positives += rows
  assert positives and all(r.endswith(",5") for r in positives)
  store = store_lib.open_store(os.path.join(straight, "store"))
  user_index = {str(u): i for i, u in enumerate(store.user_ids)}
  item_index = {str(i): j for j, i in enumerate(store.item_ids)}
  mine = {}
  for r in positives:
    u, i, _ = r.split(",")
    mine.setdefault(u, set()).add(item_index[i])
  # Below the threshold: the users' other interactions in the store (so
  # that the negatives drawn stay those of the clean file), and items they
  # never interacted with (`fresh`, for the check at the end).
  interacted = implicit.interacted_keys(store)
  below, fresh = [], []
  for u, items in mine.items():
    others = [j for j in range(store.num_items) if j not in items]
    known = implicit.contains(interacted, implicit.keys(
        np.full(len(others), user_index[u]), np.array(others),
        store.num_items))
    below += [f"{u},{store.item_ids[j]},{1 + n % 2}" for n, j in
              enumerate(np.array(others)[known][:4])]
    fresh += [f"{u},{store.item_ids[j]},1" for j in
              np.array(others)[~known][:2]]
  assert below and fresh
  clean, raw = tmp_path / "clean.csv", tmp_path / "raw.csv"
  clean.write_text("\n".join([head] + positives) + "\n")
  raw.write_text("\n".join([head] + positives + below) + "\n")
  a = eval_lib.evaluate_workdir(straight, ratings=str(clean),
                                support_curve=False)["scenarios"]
  b = eval_lib.evaluate_workdir(straight, ratings=str(raw),
                                support_curve=False)["scenarios"]
  for scenario in ("UC", "UIC"):
    assert a[scenario]["tasks"] == own[scenario]["tasks"] > 0 or (
        scenario == "UIC" and own[scenario]["tasks"] == 0)
    # The protocol's own tasks, read back from the files.
    assert a[scenario]["ranking"]["full"] == own[scenario]["ranking"]["full"]
    assert b[scenario]["tasks"] == a[scenario]["tasks"]
    assert b[scenario]["ranking"]["full"] == a[scenario]["ranking"]["full"]
  # The raw file's other interactions are never drawn as negatives.
  exp = experiment.build(config_io.read_workdir_config(straight), straight)
  keys = implicit.keys(np.array([user_index[r.split(",")[0]] for r in fresh]),
                       np.array([item_index[r.split(",")[1]] for r in fresh]),
                       store.num_items)
  assert not implicit.contains(interacted, keys).any()
  evaluator = Evaluator(exp, runtime.make_mesh(), interacted=np.unique(keys))
  assert implicit.contains(evaluator.ranking.interacted, keys).all()
  assert implicit.contains(evaluator.ranking.interacted, interacted).all()


def test_serving_never_samples_an_older_rated_item_as_a_negative(
    straight, tmp_path):
  """A user with more clicks than `max_support`: the server's engine
  adapts as `Export.adapt` (and export) do, sampling negatives among the
  items the user never rated (it avoided only the support's, so an older
  click could be learned as a negative)."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax import export
  from metarec_jax.data import store as store_lib
  from metarec_jax.serve import engine as engine_lib
  store = store_lib.open_store(os.path.join(straight, "store"))
  offsets, items = np.asarray(store.offsets), np.asarray(store.items)
  lines = ["user,item,rating"]
  for u in range(1, 6):
    for i in items[offsets[u]:offsets[u + 1]][:30]:
      lines.append(f"{store.user_ids[u]},{store.item_ids[i]},5")
  path = tmp_path / "clicks.csv"
  path.write_text("\n".join(lines) + "\n")
  out = str(tmp_path / "export")
  export.export_workdir(straight, str(path), out, chunk_users=4)
  e = export.load(out)
  g = engine_lib.Engine(e, engine_lib.Limits(max_batch=8, max_items=16))
  top = np.float32(e.rating_range[1])
  probe = np.arange(0, e.num_items, max(1, e.num_items // 16))[:16]
  for row in range(e.num_users):
    user = e.user_ids[row].item()
    known, ratings = e.known_ratings(row)
    assert len(known) > e.max_support  # older clicks beyond the support
    new = np.setdiff1d(np.arange(e.num_items), known)[:1]
    g.learn([(user, new, np.full(1, top))])
    got = g.predict([(user, probe)])[0]["scores"]
    pairs = list(zip(e.item_ids[known].tolist(), ratings.tolist()))
    pairs.append((e.item_ids[new[0]].item(), float(top)))
    want = e.adapt(pairs, user_id=user).predict(e.item_ids[probe].tolist())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                               err_msg=f"user {user}")


def _export_clicks(straight, out, users, n=30):
  """Exports the first `n` positives of store users `users` as clicks."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax import export
  from metarec_jax.data import store as store_lib
  store = store_lib.open_store(os.path.join(straight, "store"))
  offsets, items = np.asarray(store.offsets), np.asarray(store.items)
  lines = ["user,item,rating"]
  for u in users:
    for i in items[offsets[u]:offsets[u + 1]][:n]:
      lines.append(f"{store.user_ids[u]},{store.item_ids[i]},5")
  path = out.parent / (out.name + ".csv")
  path.write_text("\n".join(lines) + "\n")
  export.export_workdir(straight, str(path), str(out), chunk_users=4)
  return export.load(str(out)), store.user_ids[users[-1]].item()


def test_an_exported_users_model_follows_its_clicks_not_its_row(
    straight, tmp_path):
  """The same clicks give a user the same exported model whoever else is
  in the file (the negatives were keyed by the user's row), and the model
  `Export.adapt` (and so the server) gives those clicks."""
  many, user = _export_clicks(straight, tmp_path / "many", [1, 2, 3, 4, 5])
  one, same = _export_clicks(straight, tmp_path / "one", [5])
  assert user == same and many.user_row(user) == 4 and one.user_row(user) == 0
  probe = many.item_ids[:16].tolist()
  np.testing.assert_array_equal(many.predict(user, probe),
                                one.predict(user, probe))
  known, ratings = many.known_ratings(many.user_row(user))
  again = many.adapt(list(zip(many.item_ids[known].tolist(),
                              ratings.tolist())), user_id=user)
  np.testing.assert_allclose(again.predict(probe), many.predict(user, probe),
                             rtol=1e-5, atol=1e-6)


def test_export_adapt_refuses_an_infinite_or_off_scale_click_rating(
    straight, tmp_path):
  """`Export.adapt` on an implicit export refuses a pair whose rating is
  infinite, NaN or off the scale, as the server does (an infinite one was
  taken as a positive, -inf or -5 as a known negative, silently); bare
  item ids (positives) are still taken."""
  e, _ = _export_clicks(straight, tmp_path / "clicks", [1])
  item = e.item_ids[0].item()
  assert e.adapt([item]).support_size == 1
  assert e.adapt([(item, 5.0)]).support_size == 1
  for bad in (np.inf, -np.inf, np.nan, 0.0, 99.0, -5.0):
    with pytest.raises(ValueError, match="scale 1 to 5"):
      e.adapt([(item, bad), e.item_ids[1].item()])


def test_the_rating_keys_that_implicit_feedback_turns_off_are_named(
    tmp_path):
  """config.json keeps `model.anchor: true` and `model.calibration:
  median` as given (a helper read them as what ran); the log says neither
  applies."""
  from metarec_jax import experiment  # pylint: disable=g-import-not-at-top
  config = implicit_config()
  config.model.update({"anchor": True, "calibration": "median"})
  said = []
  experiment.build(config, str(tmp_path), log=said.append)
  assert ("implicit feedback: model.anchor and model.calibration (for"
          " ratings) do not apply") in said
  config.model.update({"anchor": False, "calibration": "none"})
  said = []
  experiment.build(config, str(tmp_path), log=said.append)
  assert not [s for s in said if "do not apply" in s]
