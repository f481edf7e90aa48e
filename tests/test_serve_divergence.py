"""No adapted model that is not finite is returned or served.

The export of the tiny ML-1M run is copied with its manifest's inner rate
raised to 1e6 (digest rewritten, as an export would write it): every
adaptation at serving time then diverges for real, while the exported
users' stored models stay finite. `Export.adapt` must refuse, and the
server (the engine in-process, then a real `metarec serve` process over
HTTP) must serve each user its model before any interaction (exported, or
the meta-parameters), say `adapted: false`, keep and log the ratings, and
name the user in a warning.
"""

import json
import logging
import os
import shutil

import httpx
import numpy as np
import pytest

from metarec_jax import export as export_lib
from metarec_jax.export import layout
from metarec_jax.serve import engine as engine_lib
from test_serve import Server

LIMITS = engine_lib.Limits(max_batch=2, max_items=16, max_ratings=40,
                           max_k=20)


@pytest.fixture(scope="module")
def exports(ml1m_tiny_run, tmp_path_factory):
  """(the export folder, its copy whose inner loop diverges)."""
  workdir, ratings = ml1m_tiny_run
  tmp = tmp_path_factory.mktemp("diverge")
  good = str(tmp / "export")
  export_lib.export_workdir(workdir, ratings, good, top_k=0)
  bad = str(tmp / "diverging")
  shutil.copytree(good, bad)
  path = os.path.join(bad, layout.MANIFEST)
  with open(path) as f:
    manifest = json.load(f)
  manifest["meta_config"]["inner_lr"] = 1e6
  data = json.dumps(manifest).encode()
  with open(path, "wb") as f:
    f.write(data)
  with open(os.path.join(bad, layout.MANIFEST_DIGEST), "w") as f:
    f.write(layout._manifest_digest_line(data))  # pylint: disable=protected-access
  return good, bad


def _history(export, n=6):
  """Catalogue positions and ratings of `n` items (whole stars 1-5)."""
  return np.arange(n, dtype=np.int64), np.asarray(
      [5, 1, 4, 2, 5, 3][:n], np.float32)


def test_the_python_api_refuses_a_diverged_adaptation(exports):
  good, bad = (export_lib.load(p) for p in exports)
  ratings = [(good.item_ids[i].item(), 5.0) for i in range(4)]
  user = good.adapt(ratings)
  assert np.all(np.isfinite(user.predict(good.item_ids[:8])))
  with pytest.raises(ValueError, match=r"not finite.*meta\.inner_lr=1000000"):
    bad.adapt(ratings)


def test_the_engine_keeps_a_diverged_user_on_its_model(exports, caplog):
  good = engine_lib.Engine(export_lib.load(exports[0]), LIMITS)
  bad = engine_lib.Engine(export_lib.load(exports[1]), LIMITS)
  user = bad.export.user_ids[0].item()
  row = bad.export.user_row(user)
  items, ratings = _history(bad.export)
  probe = np.arange(8, 16, dtype=np.int64)
  # The same interaction adapts finitely on the export as written.
  assert good.learn([(user, items, ratings)])[0]["adapted"] is True
  assert good.predict([(user, probe)])[0]["source"] == "adapted"

  before = bad.predict([(user, probe)])[0]
  assert before["source"] == "export"
  rated = len(bad.export.known_ratings(row)[0])
  with caplog.at_level(logging.WARNING, logger="metarec"):
    r = bad.learn([(user, items, ratings)])[0]
  # The fallback is the export's model, personal as the export's row was.
  assert r == {"adapted": False, "rated": rated + len(items),
               "support_size": int(bad.export.support_sizes[row]),
               "personal": bad.export.user(user).personal}
  assert r["personal"] is True
  assert f"user {user!r}: adapting on" in caplog.text
  assert "not finite" in caplog.text and "inner_lr=1000000" in caplog.text
  after = bad.predict([(user, probe)])[0]
  assert after == before  # the export's model, source and scores
  top = bad.recommend([(user, 10)])[0]
  assert top["source"] == "export" and len(top["items"]) == 10
  assert np.all(np.isfinite([s for _, s in top["items"]]))
  # The ratings are kept: the newly rated items are never recommended, and
  # the next interaction adapts on them too.
  ids = set(bad.export.item_ids[items].tolist())
  assert not ids & {i for i, _ in top["items"]}
  assert len(bad.sessions[user].items) == rated + len(items)

  stranger = 987654321
  r = bad.learn([(stranger, items[:2], ratings[:2])])[0]
  assert r == {"adapted": False, "rated": 2, "support_size": 0,
               "personal": False}
  assert bad.predict([(stranger, probe)])[0]["source"] == "meta"

  anonymous = bad.adapt([(items, ratings, 5)])[0]
  assert anonymous["adapted"] is False and anonymous["support_size"] == 0
  assert anonymous["personal"] is False
  assert anonymous["source"] == "meta" and len(anonymous["items"]) == 5
  assert np.all(np.isfinite([s for _, s in anonymous["items"]]))
  assert good.adapt([(items, ratings, 5)])[0]["adapted"] is True


def test_a_user_kept_unadapted_at_start_is_warned_about_once(
    exports, tmp_path, caplog):
  """A start's replay adapts only the `--adapted_cache` most recent users;
  one adapted when first asked for was served its fallback without the
  warning a replayed, adapted user got (a reviewer's finding). It is
  warned about at that first adaptation, and not again."""
  from metarec_jax.serve import interaction_log, service  # pylint: disable=g-import-not-at-top
  bad = engine_lib.Engine(export_lib.load(exports[1]), LIMITS,
                          adapted_cache=1)
  fmt, clock = interaction_log.export_format(bad.export.path)
  log = interaction_log.InteractionLog(str(tmp_path), fmt, clock=clock)
  first, last = 555000001, 555000002
  items, ratings = _history(bad.export)
  ids = bad.export.item_ids[items].tolist()
  log.append([first] * 6 + [last] * 6, ids * 2, ratings.tolist() * 2)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    service.replay(bad, log)
  log.close()
  assert f"user {last!r}: adapting on" in caplog.text  # adapted at start
  assert f"user {first!r}" not in caplog.text  # kept for later
  probe = np.arange(8, 16, dtype=np.int64)
  for _ in range(2):  # adapted, then dropped and adapted again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="metarec"):
      assert bad.predict([(first, probe)])[0]["source"] == "meta"
      bad.predict([(last, probe)])
    said = caplog.text
    assert (f"user {first!r}: adapting on" in said) == (_ == 0), said
    assert f"user {last!r}" not in said


def test_the_server_answers_adapted_false_over_http(exports, tmp_path):
  server = Server(exports[1], tmp_path / "log", stderr_path=tmp_path / "err")
  try:
    server.wait_ready()
    with httpx.Client(base_url=server.url, timeout=60) as client:
      export = export_lib.load(exports[1])
      user = export.user_ids[0].item()
      items = export.item_ids[:6].tolist()
      stars = [5, 1, 4, 2, 5, 3]  # `_history`: diverges for this user
      before = client.get(f"/v1/users/{user}/recommendations?k=20").json()
      r = client.post(f"/v1/users/{user}/interactions",
                      json={"ratings": [list(p) for p in zip(items, stars)]})
      assert r.status_code == 200, r.text
      assert r.json()["adapted"] is False
      after = client.get(f"/v1/users/{user}/recommendations?k=5").json()
      assert after["source"] == "export"
      assert all(np.isfinite(i["score"]) for i in after["items"])
      # The export's ranking without the newly rated items.
      assert after["items"] == [i for i in before["items"]
                                if i["item"] not in items][:5]
      r = client.post("/v1/adapt", json={
          "ratings": [list(p) for p in zip(items, stars)], "k": 3})
      assert r.status_code == 200, r.text
      assert r.json()["adapted"] is False and len(r.json()["items"]) == 3
    # The ratings were logged (acknowledged) although not adapted on.
    assert len((tmp_path / "log" / "interactions.dat").read_text()
               .splitlines()) == 6
    assert f"user {user!r}: adapting on" in server.stderr()
  finally:
    server.stop()


def test_an_exported_user_whose_row_is_not_finite_is_adapted_again(
    exports, caplog):
  """Damage past the digests checked at load (helper D: a NaN written past
  the first 4 KiB of an adapted leaf's file): the server answered 200
  with null scores and empty recommendations, and kept the empty ranking.
  The user is now adapted on its exported ratings, as the export was
  (the same predictions as the intact row), with a warning."""
  intact = engine_lib.Engine(export_lib.load(exports[0]), LIMITS)
  damaged = engine_lib.Engine(export_lib.load(exports[0]), LIMITS)
  user = damaged.export.user_ids[1].item()
  row = damaged.export.user_row(user)
  leaf = sorted(damaged.export.adapted)[0]
  values = np.array(damaged.export.adapted[leaf])
  values[row] = np.nan  # (a copy: the file stays intact)
  damaged.export.adapted[leaf] = values
  probe = np.arange(16, dtype=np.int64)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    got = damaged.predict([(user, probe)])[0]
    ranked = damaged.recommend([(user, 5)])[0]
  want = intact.predict([(user, probe)])[0]
  assert np.all(np.isfinite(got["scores"]))
  np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5,
                             atol=1e-5)
  assert got["source"] == "adapted"
  assert [i for i, _ in ranked["items"]] == [
      i for i, _ in intact.recommend([(user, 5)])[0]["items"]]
  assert f"user {user!r}: its adapted parameters in {exports[0]} (row" \
      f" {row}) are not finite: damaged" in caplog.text
  # Once: the user has a session now.
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="metarec"):
    damaged.predict([(user, probe)])
  assert "not finite" not in caplog.text


def test_a_damaged_row_whose_readaptation_diverges_serves_the_meta_model(
    exports, caplog):
  """The re-adaptation of a damaged row (above) fell back, where it
  diverged, on the damaged row itself: NaN scores and an empty ranking,
  kept (reviewer R). It falls back on the meta-parameters' model."""
  damaged = engine_lib.Engine(export_lib.load(exports[1]), LIMITS,
                              adapted_cache=1)
  user = damaged.export.user_ids[1].item()
  row = damaged.export.user_row(user)
  leaf = sorted(damaged.export.adapted)[0]
  values = np.array(damaged.export.adapted[leaf])
  values[row] = np.nan
  damaged.export.adapted[leaf] = values
  probe = np.arange(16, dtype=np.int64)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    got = damaged.predict([(user, probe)])[0]
    ranked = damaged.recommend([(user, 5)])[0]
  assert got["source"] == "meta"
  assert np.all(np.isfinite(got["scores"]))
  assert len(ranked["items"]) == 5
  assert "serving the meta model instead" in caplog.text
  # ... also once its session's leaves were dropped (adapted_cache=1: another
  # user learns) and adapted again (reviewer R2: the damaged row again).
  other = damaged.export.user_ids[2].item()
  damaged.learn([(other, np.arange(3), np.array([5, 1, 4], np.float32))])
  assert damaged.sessions.dropped([user]) == [user]
  again = damaged.predict([(user, probe)])[0]
  assert again["source"] == "meta" and np.all(np.isfinite(again["scores"]))
  assert len(damaged.recommend([(user, 5)])[0]["items"]) == 5
