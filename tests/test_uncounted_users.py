"""A user with fewer ratings than the model's validated `warm_min_support`
is served as one without ratings, and every reply says so: the export's
`uncounted` flag, `UserModel.personal`, and `personal` in the server's
replies to interactions and anonymous adaptations.

The tiny ML-1M run is exported with its checkpoint read at a minimum of 3
(what a validation fits where one or two ratings mislead), so the export,
its Python API and an engine serving it all hold that minimum.
"""

import dataclasses
import json
import os
import shutil

import httpx
import jax
import numpy as np
import pytest

from conftest import count_compiles, has_training_ratings
from metarec_jax import export as export_lib
from metarec_jax.export import checksums, compute, exporter, layout
from metarec_jax.serve import engine as engine_lib
from metarec_jax.train import min_support
from test_serve import Server

LEAST = 3.0
# Old, much-rated films (ML-1M ids): items with training ratings in the tiny
# run, whose support rows each count once (new items have their own rule).
FILMS = (1193, 914, 594, 919, 1287)
# User -> how many of FILMS it rated (user 3: none of them: skipped).
RATED = {1: 2, 2: 3, 4: 5}
UNKNOWN_FILM = 999999  # not in the catalogue: user 5's only rating


def _least(state, value=LEAST):
  minimum = next(m for m in min_support.MINIMA
                 if m.leaf == min_support.WARM_MIN_SUPPORT)
  return state.replace(params=min_support.with_value(state.params, minimum,
                                                     value))


@pytest.fixture(scope="module")
def strict(ml1m_tiny_run, tmp_path_factory):
  """(the export's summary, the loaded export) at a minimum of 3."""
  workdir, _ = ml1m_tiny_run
  tmp = tmp_path_factory.mktemp("uncounted")
  ratings = tmp / "ratings.dat"
  ratings.write_text("".join(
      f"{user}::{film}::{1 + (user + i) % 5}::{978300000 + i}\n"
      for user, n in RATED.items() for i, film in enumerate(FILMS[:n]))
      + f"5::{UNKNOWN_FILM}::4::978300000\n")  # no rating left: not uncounted
  out = str(tmp / "export")
  real = exporter.load_state
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(exporter, "load_state",
                  lambda *a, **k: _least(real(*a, **k)))
    summary = export_lib.export_workdir(workdir, str(ratings), out, top_k=3)
  return summary, export_lib.load(out)


def test_the_films_have_training_ratings(strict):
  """The fixture's premise: each film's row counts (an item with training
  ratings, `Anchor.support_weights` 1) whatever the new-item minimum."""
  export = strict[1]
  assert has_training_ratings(export, FILMS)
  assert float(export.meta_params[min_support.WARM_MIN_SUPPORT]) == LEAST


def test_the_export_flags_users_whose_ratings_do_not_count(strict):
  summary, export = strict
  assert summary["flags"]["uncounted"] == 1
  assert summary["flags"]["no_ratings"] == 1  # user 5: not uncounted too
  assert summary["flagged_users"] == 2  # none of the others is odd
  assert export.user(5).flags == layout.NO_RATINGS | layout.SKIPPED_ITEMS
  user = export.user(1)
  assert user.flags & layout.UNCOUNTED and not user.personal
  assert user.support_size == 2
  # Stored as the model of a user without ratings: the meta-parameters.
  for path, value in user.fast.items():
    np.testing.assert_array_equal(value, export.meta_leaves[path])
  for u in (2, 4):
    assert not export.user(u).flags & layout.UNCOUNTED
    assert export.user(u).personal
  assert not export.user(987654).personal  # unknown: the meta-parameters
  assert export.manifest["flags"]["uncounted"] == layout.UNCOUNTED


def test_the_python_api_says_whether_the_ratings_counted(strict):
  export = strict[1]
  two = export.adapt([(f, 4.0) for f in FILMS[:2]])
  three = export.adapt([(f, 4.0) for f in FILMS[:3]])
  assert two.flags & layout.UNCOUNTED and not two.personal
  assert three.personal and not three.flags & layout.UNCOUNTED
  assert not export.adapt([]).personal
  probe = list(FILMS[3:])
  np.testing.assert_array_equal(two.predict(probe),
                                export.user(987654).predict(probe))
  assert not np.array_equal(three.predict(probe), two.predict(probe))


def test_a_model_that_leaves_no_row_out_counts_any_rating(strict):
  export = strict[1]
  plain = dataclasses.replace(export.model, support_weights=None)
  position = export.item_index(list(FILMS[:1]))
  batch = export.support_batch(
      {n: v[None] for n, v in export.table_features_of(None).items()},
      np.resize(position, (1, 4)), np.full((1, 4), 4.0, np.float32),
      np.array([[True, False, False, False]]))
  one = jax.tree.map(lambda v: v[0], batch)  # one task's rows
  params = export.meta_params
  assert bool(plain.counts(params, one))
  assert not bool(export.model.counts(params, one))  # 1 < 3
  empty = {**one, "mask": np.zeros_like(one["mask"])}
  assert not bool(plain.counts(params, empty))
  # A config that adapts nothing (no steps, no encoder) counts no rating:
  # every user keeps the meta-parameters (a reviewer's finding).
  assert bool(compute.counts(plain, export.meta_config, params, one))
  still = export.meta_config.replace(inner_steps=0)
  assert not bool(compute.counts(plain, still, params, one))
  encoded = export.meta_config.replace(algorithm="metric")
  assert encoded.inner_steps == 0
  assert bool(compute.counts(plain, encoded, params, one))


def test_the_engine_replies_personal_once_enough_ratings_count(strict):
  export = strict[1]
  engine = engine_lib.Engine(export, engine_lib.Limits(max_batch=2,
                                                       max_items=16))
  positions = export.item_index(list(FILMS))
  stars = np.full(len(FILMS), 4.0, np.float32)
  stranger = 555555
  first = engine.learn([(stranger, positions[:2], stars[:2])])[0]
  assert first == {"support_size": 2, "rated": 2, "adapted": True,
                   "personal": False}
  served = engine.predict([(stranger, positions[3:])])[0]
  unknown = engine.predict([(None, positions[3:])])[0]
  assert served["scores"] == unknown["scores"]
  assert not served["personal"] and not unknown["personal"]
  assert engine.recommend([(stranger, 3)])[0]["personal"] is False
  then = engine.learn([(stranger, positions[2:3], stars[2:3])])[0]
  assert then["personal"] is True and then["support_size"] == 3
  assert engine.predict([(stranger, positions[3:])])[0]["personal"]
  # An exported user below the minimum becomes personal with its third.
  assert engine.learn([(1, positions[2:3], stars[2:3])])[0]["personal"]
  anonymous = engine.adapt([(positions[:2], stars[:2], 3),
                            (positions[:3], stars[:3], 3)])
  assert [a["personal"] for a in anonymous] == [False, True]


def _as_written_before_the_flag(export_dir: str, dest) -> str:
  """A copy of the export as a metarec without the `uncounted` bit wrote it:
  no such bit in `flags.npy` or the manifest, the digests rewritten."""
  shutil.copytree(export_dir, dest)
  flags = np.load(os.path.join(dest, "flags.npy"))
  np.save(os.path.join(dest, "flags.npy"), flags & ~np.uint8(layout.UNCOUNTED))
  path = os.path.join(dest, layout.MANIFEST)
  with open(path) as f:
    manifest = json.load(f)
  del manifest["flags"]["uncounted"]
  manifest["files"] = checksums.record(
      str(dest), exclude=(layout.MANIFEST, layout.MANIFEST_DIGEST))
  data = json.dumps(manifest).encode()
  with open(path, "wb") as f:
    f.write(data)
  with open(os.path.join(dest, layout.MANIFEST_DIGEST), "w") as f:
    f.write(layout._manifest_digest_line(data))  # pylint: disable=protected-access
  return str(dest)


def test_an_export_written_before_the_flag_finds_it_when_asked(strict,
                                                               tmp_path):
  """Its flags never say `uncounted`: whether an exported user's ratings
  count is then found from its stored support set (a reviewer's finding:
  such an export said `personal` for every user with ratings)."""
  path = _as_written_before_the_flag(strict[1].path, tmp_path / "old")
  old = export_lib.load(path, verify=True)
  assert not (old.flags & layout.UNCOUNTED).any()
  engine = engine_lib.Engine(old, engine_lib.Limits(max_batch=2,
                                                    max_items=16))
  # A kept ranking waits for the device's thread to find the bit (never
  # a device call, nor a compile, on the server's event loop).
  engine.rankings.preload(old)
  assert not old.knows_flags(old.user_row(1))
  assert engine.kept_reply(1, 3) is None
  assert engine.recommend([(1, 3)])[0]["personal"] is False
  assert engine.kept_reply(1, 3)["personal"] is False
  assert not old.user(1).personal and old.user(1).flags & layout.UNCOUNTED
  assert old.user(2).personal and old.user(4).personal
  # What a diverged re-adaptation falls back to: the user's exported model.
  assert engine._unadapted(old.user_row(1))[3] is False  # pylint: disable=protected-access
  assert engine._unadapted(old.user_row(2))[3] is True  # pylint: disable=protected-access
  # A server's warm-up compiles what finding the bit runs, every width.
  fresh = export_lib.load(path)
  assert fresh.warm_row_flags() == 1  # the tiny run's supports: one width
  with count_compiles() as compiles:
    assert not fresh.row_flags(fresh.user_row(4)) & layout.UNCOUNTED
  assert compiles[0] == 0


def test_the_server_says_personal_over_http(strict, tmp_path):
  """A real `metarec serve` of the export: a new user's two ratings do not
  count (`personal: false`, served the unknown users' ranking), the third
  does; likewise for anonymous sessions."""
  server = Server(strict[1].path, tmp_path / "log",
                  stderr_path=tmp_path / "err")
  try:
    server.wait_ready()
    with httpx.Client(base_url=server.url, timeout=60) as client:
      ratings = [[f, 4] for f in FILMS]
      r = client.post("/v1/users/777/interactions", json={"ratings":
                                                          ratings[:2]})
      assert r.status_code == 200, r.text
      assert r.json()["personal"] is False and r.json()["adapted"] is True
      top = client.get("/v1/users/777/recommendations?k=10").json()
      stranger = client.get("/v1/users/778/recommendations?k=12").json()
      assert top["items"] == [i for i in stranger["items"]
                              if i["item"] not in FILMS[:2]][:10]
      assert top["personal"] is False and top["source"] == "adapted"
      again = client.get("/v1/users/777/recommendations?k=10").json()
      assert again == top  # answered from the kept ranking
      assert stranger["personal"] is False
      # Exported users: as their export flags say (ranked, then kept).
      for _ in range(2):
        said = [client.get(f"/v1/users/{u}/recommendations?k=3").json()[
            "personal"] for u in (1, 2)]
        assert said == [False, True]
      predicted = client.post("/v1/predict", json={"user": 1,
                                                   "items": [FILMS[4]]})
      assert predicted.json()["personal"] is False
      r = client.post("/v1/users/777/interactions", json={"ratings":
                                                          ratings[2:3]})
      assert r.json()["personal"] is True
      assert client.get("/v1/users/777/recommendations?k=3").json()[
          "personal"] is True
      said = [client.post("/v1/adapt", json={"ratings": ratings[:n], "k": 2}
                          ).json()["personal"] for n in (2, 3)]
      assert said == [False, True]
  finally:
    server.stop()
