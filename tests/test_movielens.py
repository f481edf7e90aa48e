"""MovieLens-1M and -100K loaders: real files and hand-made ones."""

import collections
import logging
import os
import re

import numpy as np
import pytest

import datafiles
from conftest import config_path
from metarec_jax import config_io, experiment
from metarec_jax.data.convert import movielens, movielens100k, prepare
from metarec_jax.data import store as store_lib
from metarec_jax.errors import InputError


def vocab_of(store, name, index):
  return store.vocab(name)[int(index)]


def user_ratings(store, user_id):
  u = store.user_ids.tolist().index(user_id)
  lo, hi = store.offsets[u], store.offsets[u + 1]
  items = store.item_ids[store.items[lo:hi]].tolist()
  return list(zip(items, store.ratings[lo:hi].tolist()))


def test_the_full_movielens_1m_matches_its_readme(shared_data, tmp_path):
  root = os.path.join(shared_data, "ml-1m")
  manifest = movielens.load(root, tmp_path / "store")
  store = store_lib.open_store(tmp_path / "store")
  raw = [l.split("::")[:2] for l in open(os.path.join(root, "ratings.dat"))]
  assert len(raw) == 903_328
  pairs = collections.Counter(map(tuple, raw))
  duplicates = sum(c - 1 for c in pairs.values())
  assert duplicates > 0
  assert store.num_users == 6040 and store.num_items == 3883
  assert store.num_ratings == 903_328 - duplicates == manifest["num_ratings"]
  assert manifest["duplicates"]["dropped"] == duplicates
  raters = {int(u) for u, _ in raw}
  assert (store.counts() > 0).sum() == len(raters) == 5436
  assert manifest["users_without_ratings"] == 6040 - 5436
  # Indices follow ascending external ids.
  assert (np.diff(store.user_ids) > 0).all()
  assert (np.diff(store.item_ids) > 0).all()
  # Every movie of movies_extrainfos.dat (3881 of 3883) has MeLU features.
  has_extra = (store.item_features["rate"] > 0) | (
      store.item_features["genre"][:, 0] > 0)
  assert has_extra.sum() == 3881
  names = [f.name for f in store.features]
  assert names == ["gender", "age", "occupation", "zip", "rate", "genre",
                   "director", "actor"]
  for name in ("rate", "genre", "director", "actor"):
    vocab = store.vocab(name)
    assert "N/A" not in vocab and len(vocab) == len(set(vocab))
  assert not any("(" in d for d in store.vocab("director"))
  assert len(store.vocab("genre")) == 25  # 24 IMDb genres + index 0
  shapes = {f.name: f.max_len for f in store.features}
  assert (shapes["genre"], shapes["director"], shapes["actor"]) == (4, 2, 4)
  # Item classes: the title year of movies.dat, 1998 or later is new.
  years = {}
  with open(os.path.join(root, "movies.dat"), encoding="iso-8859-1") as f:
    for line in f:
      movie, title, _ = line.rstrip("\n").split("::")
      years[int(movie)] = int(re.search(r"\((\d{4})\)$", title).group(1))
  expected_new = np.array([years[i] >= 1998 for i in store.item_ids.tolist()])
  np.testing.assert_array_equal(store.item_new, expected_new)
  # A user's ratings are in file order; a duplicate keeps the last rating.
  first_user = [tuple(map(int, l.split("::"))) for l in
                open(os.path.join(root, "ratings.dat")).readlines()[:53]]
  assert user_ratings(store, 1) == [(i, float(r)) for _, i, r in first_user]
  (user, movie), = [k for k, c in pairs.items() if c > 1][:1]
  last = [l for l in open(os.path.join(root, "ratings.dat"))
          if l.startswith(f"{user}::{movie}::")][-1]
  assert dict(user_ratings(store, int(user)))[int(movie)] == float(
      last.split("::")[2])
  assert manifest["ratings_format"]["delimiter"] == "::"


def test_hand_made_ml1m_files_follow_every_rule(tmp_path):
  root = datafiles.tiny_ml1m(str(tmp_path / "ml"))
  manifest = movielens.load(root, tmp_path / "store", list_pad={
      "genre": 2, "director": 2, "actor": 3})
  s = store_lib.open_store(tmp_path / "store")
  assert s.user_ids.tolist() == [1, 2, 3]
  assert s.item_ids.tolist() == [10, 20, 30]
  assert s.counts().tolist() == [3, 0, 1]  # user 2 kept without ratings
  # Timestamp order; the duplicate (1, 20) keeps its last rating, 1 star.
  assert user_ratings(s, 1) == [(10, 5.0), (30, 3.0), (20, 1.0)]
  assert s.timestamps.tolist() == [100, 200, 400, 50]
  assert manifest["duplicates"]["dropped"] == 1
  assert s.item_new.tolist() == [False, True, False]
  f = s.item_features
  assert [vocab_of(s, "rate", i) for i in f["rate"]] == [
      "G", "<missing>", "<missing>"]
  assert [vocab_of(s, "genre", i) for i in f["genre"][0]] == [
      "Animation", "Adventure"]
  assert [vocab_of(s, "director", i) for i in f["director"][1]] == [
      "Ash Brannon", "John Lasseter"]
  assert [vocab_of(s, "actor", i) for i in f["actor"][0]] == [
      "Tom Hanks", "Tim Allen", "Don Rickles"]
  assert f["actor"][1].tolist() == [0, 0, 0]  # N/A is missing
  assert (f["genre"][2] == 0).all()  # no extra infos for movie 30
  u = s.user_features
  assert [vocab_of(s, "gender", i) for i in u["gender"]] == ["F", "M", "M"]
  assert [vocab_of(s, "age", i) for i in u["age"]] == ["1", "56", "25"]
  assert s.vocab("age") == ["<missing>", "1", "25", "56"]  # numeric order


def test_three_field_ratings_keep_file_order(tmp_path):
  root = datafiles.tiny_ml1m(str(tmp_path / "ml"))
  datafiles.write(os.path.join(root, "ratings.dat"),
                  "1::30::3\n1::10::5\n1::20::4\n")
  movielens.load(root, tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  assert s.timestamps is None
  assert user_ratings(s, 1) == [(30, 3.0), (10, 5.0), (20, 4.0)]


def test_the_official_zip_without_extrainfos_falls_back_loudly(
    shared_data, tmp_path, caplog):
  root = datafiles.ml1m_subset(shared_data, str(tmp_path / "ml"), 40,
                               extrainfos=False)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    manifest = movielens.load(root, tmp_path / "store")
  assert any("movies_extrainfos.dat" in r.message for r in caplog.records)
  assert "movies_extrainfos.dat" in manifest["notes"][0]
  s = store_lib.open_store(tmp_path / "store")
  assert [f.name for f in s.features if f.side == "item"] == ["genre", "year"]
  toy = s.item_ids.tolist().index(1)
  assert [vocab_of(s, "genre", i) for i in s.item_features["genre"][toy]
          if i] == ["Animation", "Children's", "Comedy"]
  assert vocab_of(s, "year", s.item_features["year"][toy]) == "1995"


def test_movielens_100k_layout(tmp_path):
  root = datafiles.tiny_ml100k(str(tmp_path / "ml"))
  manifest = movielens100k.load(root, tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  assert s.num_users == 30 and s.num_items == 40
  assert s.num_ratings == 30 * 25
  assert manifest["ratings_format"]["delimiter"] == "\t"
  ages = [7, 17, 18, 24, 25, 40, 45, 50, 55, 56, 73]
  buckets = {7: "1", 17: "1", 18: "18", 24: "18", 25: "25", 40: "35",
             45: "45", 50: "50", 55: "50", 56: "56", 73: "56"}
  got = [vocab_of(s, "age", i) for i in s.user_features["age"]]
  assert got == [buckets[ages[u % len(ages)]] for u in range(1, 31)]
  assert vocab_of(s, "zip", s.user_features["zip"][0]) == "100"  # 10037
  # Genres in u.genre order, `unknown` dropped, padded to 4.
  genres = ["unknown", "Action", "Comedy", "Drama", "Sci-Fi"]
  for row, item in enumerate(s.item_ids.tolist()):
    flagged = [g for k, g in enumerate(genres) if (item + k) % 3 == 0
               and g != "unknown"]
    got = [vocab_of(s, "genre", i) for i in s.item_features["genre"][row] if i]
    assert got == flagged[:4]
  years = [vocab_of(s, "year", i) for i in s.item_features["year"]]
  assert years[-1] == "<missing>"  # item 40 has no release date
  expected_new = [(1990 + i % 10) >= 1998 and i != 40 for i in range(1, 41)]
  assert s.item_new.tolist() == expected_new
  # Each user's ratings in timestamp order.
  for u in range(s.num_users):
    ts = s.timestamps[s.offsets[u]:s.offsets[u + 1]]
    assert (np.diff(ts) >= 0).all()


def test_a_work_directory_store_of_another_list_pad_is_refused(tmp_path):
  # A resume with another data.list_pad.genre trained on the old store's
  # genres, the change only logged.
  data = config_io.load_config_file(config_path("melu_ml100k")).data
  data.root = datafiles.tiny_ml100k(str(tmp_path / "ml"))
  prepare.ensure_store(data, tmp_path / "work")
  data.list_pad.actor = 9  # no list of MovieLens-100K: no matter
  prepare.ensure_store(data, tmp_path / "work")
  data.list_pad.genre = 2
  with pytest.raises(InputError, match=re.escape(
      f"{tmp_path / 'work' / 'store'}: the store was built with another"
      " data.list_pad (genre: 4 there, 2 now)")):
    prepare.ensure_store(data, tmp_path / "work")


def test_melu_runs_on_movielens_100k(tmp_path):
  root = datafiles.tiny_ml100k(str(tmp_path / "ml"), num_users=40,
                               ratings_per_user=30)
  config = config_io.load_config_file(config_path("melu_ml100k"))
  config_io.apply_overrides(config, [
      ("data.root", root), ("model.embed_dim", "4"), ("model.hidden", "(8,)"),
      ("train.tasks_per_step", "4")])
  exp = experiment.build(config, str(tmp_path / "work"))
  assert {f.name for f in exp.tables.specs} == {
      "genre", "year", "gender", "age", "occupation", "zip", "item_id"}
  # pylint: disable=g-import-not-at-top
  import jax
  from metarec_jax.data.sampler import TrainSampler
  sampler = TrainSampler(exp.split, exp.tables, exp.store.items,
                         exp.store.ratings, exp.sampler_spec())
  batch = jax.tree.map(lambda a: a[0], sampler.batch(0))
  params = exp.model.init(jax.random.PRNGKey(0))
  loss = exp.model.loss_fn(params, batch["support"])
  assert np.isfinite(float(loss))


def test_prepare_needs_a_data_root(tmp_path):
  config = config_io.load_config_file(config_path("melu_ml1m"))
  with pytest.raises(InputError, match="data.root is required"):
    prepare.prepare(config.data, tmp_path / "store")


@pytest.mark.parametrize("name", ["melu_ml1m", "melu_ml100k"])
def test_movielens_configs_pad_the_protocol_supports(name, tmp_path):
  config = config_io.load_config_file(config_path(name))
  longest = config.eval.max_ratings - config.data.query_size
  assert config.data.max_support >= longest
  assert max(config.data.buckets) == config.data.max_support
  assert config.eval.max_tasks == 0 and config.data.root == ""
  if name == "melu_ml1m":
    root = datafiles.tiny_ml1m(str(tmp_path / "ml"))
  else:
    root = datafiles.tiny_ml100k(str(tmp_path / "ml"))
  config.data.root = root
  exp = experiment.build(config, str(tmp_path / "work"))
  assert exp.store.manifest["dataset"] == config.data.name


@pytest.mark.parametrize("name,files,says", [
    ("movielens-1m", {"ratings.csv": "userId,movieId,rating,timestamp\n"
                                      "1,1,3.5,9\n",
                      "movies.csv": "movieId,title,genres\n1,A (1995),X\n"},
     r"no users\.dat: the folder holds MovieLens-20M/25M/32M/latest"
     r" \(ratings\.csv\), not movielens-1m; no MovieLens loader reads it.*"
     r"data\.name=generic"),
    ("movielens-100k", {"ratings.dat": "1::1::3.5::9\n",
                        "movies.dat": "1::A (1995)::X\n",
                        "tags.dat": "1::1::good::9\n"},
     r"no u\.data: the folder holds MovieLens-10M .*delimiter=::"),
    ("movielens-1m", {"u.data": "1\t1\t3\t9\n"},
     r"holds MovieLens-100K, not movielens-1m; data\.name=movielens-100k"
     r" reads it"),
    ("movielens-1m", {"ml-1m/users.dat": "1::F::1::10::48067\n",
                      "ml-1m/movies.dat": "1::A (1995)::X\n",
                      "ml-1m/ratings.dat": "1::1::3::9\n"},
     r"no users\.dat here, but ml-1m/ holds the movielens-1m files: set"
     r" data\.root=.*ml-1m$"),
])
def test_another_movielens_release_is_named_in_one_line(tmp_path, name,
                                                        files, says):
  # Was "ROOT/users.dat: no such file" for a folder of another release.
  root = tmp_path / "ml"
  for file, text in files.items():
    (root / file).parent.mkdir(parents=True, exist_ok=True)
    (root / file).write_text(text)
  config = config_io.load_config_file(config_path("melu_ml1m"))
  config.data.name, config.data.root = name, str(root)
  with pytest.raises(InputError, match=says) as e:
    prepare.prepare(config.data, tmp_path / "store")
  assert "\n" not in str(e.value) and str(root) in str(e.value)
  assert not os.path.exists(tmp_path / "store")
