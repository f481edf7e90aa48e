"""`metarec export` and `metarec_jax.export.load` on a tiny trained run.

On the session's tiny Meta-SGD run (`conftest.tiny_metasgd_run`), each test
exports a ratings file written from the run's synthetic store and checks the
folder and the serving API against the functional core's own adaptation.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import signal
import sys

import jax
import numpy as np
import pytest

from cli_run import (assert_one_line_error, last_json, metarec,
                     metarec_here)
from flax import traverse_util
from conftest import ROOT, config_path
from procs import env_with, start, wait_for
from metarec_jax import config_io, experiment, export, meta, runtime
from metarec_jax.data.convert import ratings_io
from metarec_jax.data.tasks import FeatureTables
from metarec_jax.errors import InputError
from metarec_jax.export import layout
from metarec_jax.train import train_and_evaluate
from metarec_jax.workdir.restore import load_state

MAX_SUPPORT = 16  # configs/tiny.py


@pytest.fixture(scope="module")
def run(tiny_metasgd_run):
  """The session's tiny Meta-SGD run (its learned inner rates make it the
  export with the most to get right; MAML's: test_export_ml1m.py and
  test_serve.py), its experiment and restored meta-parameters."""
  workdir = tiny_metasgd_run
  exp = experiment.build(config_io.read_workdir_config(workdir), workdir)
  state = load_state(exp, workdir, runtime.make_mesh())
  return workdir, exp, jax.device_get(state.params)


def store_rows(exp, user_ids):
  """(users, items, ratings) external ids of the store's ratings of users."""
  store = exp.store
  index = ratings_io.lookup(store.user_ids, np.asarray(user_ids))
  counts = store.counts()
  rows = np.concatenate([np.arange(store.offsets[i], store.offsets[i + 1])
                         for i in index])
  users = np.repeat(np.asarray(store.user_ids)[index], counts[index])
  return (users, np.asarray(store.item_ids)[store.items[rows]],
          np.asarray(store.ratings)[rows])


def write_file(path, exp, users, items, ratings, *, shuffle_seed=0):
  """A ratings file in the store's format, lines interleaved at random
  (`shuffle_seed=None`: in the order given)."""
  order = (np.arange(len(users)) if shuffle_seed is None else
           np.random.default_rng(shuffle_seed).permutation(len(users)))
  ratings_io.write_ratings(path, np.asarray(users)[order],
                           np.asarray(items)[order],
                           np.asarray(ratings)[order], exp.store)
  return str(path)


def file_support(path, exp, user_id):
  """The user's support set by the documented rule, computed here: known
  items, the last line of a repeated item, then the last max_support lines
  (the synthetic format has no timestamps)."""
  users, items, ratings, _ = ratings_io.read_ratings(path, exp.store)
  item_index = ratings_io.lookup(exp.store.item_ids, items)
  mine = np.flatnonzero((users == user_id) & (item_index >= 0))
  last = {}
  for row in mine:  # file order: a later line replaces an earlier one
    last.pop(int(item_index[row]), None)
    last[int(item_index[row])] = float(ratings[row])
  pairs = list(last.items())[-MAX_SUPPORT:]
  return (np.array([p[0] for p in pairs], np.int64),
          np.array([p[1] for p in pairs], np.float32))


def core_predictions(exp, meta_params, user_id, support_items,
                     support_ratings, query_items):
  """Adapt with `meta.adapt` on one unpadded task, predict with the model."""
  row = int(ratings_io.lookup(exp.store.user_ids, np.array([user_id]))[0])
  user = {n: (np.asarray(t)[[row]] if row >= 0 else np.zeros_like(t[:1]))
          for n, t in exp.tables.user.items()}
  tables = FeatureTables(exp.tables.specs, user, exp.tables.item)
  n = len(support_items)
  support = tables.rows(np.zeros(1, np.int64), support_items[None],
                        support_ratings[None], np.ones((1, n), bool))
  support = jax.tree.map(lambda a: a[0], support)
  params, inner = meta_params["model"], meta_params["inner"]
  adapted = jax.jit(lambda p, i, s: meta.adapt(
      exp.model.loss_fn, p, s, config=exp.meta_config, inner=i))(
          params, inner, support)
  q = len(query_items)
  query = tables.rows(np.zeros(1, np.int64), query_items[None],
                      np.zeros((1, q), np.float32), np.ones((1, q), bool))
  return np.asarray(exp.model.predict(
      adapted, jax.tree.map(lambda a: a[0], query["features"])))


def arrays(folder):
  """{relative path: array} of every .npy file of a folder."""
  out = {}
  for root, _, files in os.walk(folder):
    for f in files:
      if f.endswith(".npy"):
        path = os.path.join(root, f)
        out[os.path.relpath(path, folder)] = np.load(path)
  return out


USERS = list(range(1, 31))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  """30 users' store ratings exported (float32, top 5) and loaded."""
  workdir, exp, _ = run
  tmp = tmp_path_factory.mktemp("exported")
  path = write_file(tmp / "ratings.csv", exp, *store_rows(exp, USERS))
  out = str(tmp / "export")
  summary = export.export_workdir(workdir, path, out, top_k=5)
  return path, out, summary, export.load(out)


def test_predictions_equal_the_core_adapted_model(run, exported):
  _, exp, meta_params = run
  path, _, summary, loaded = exported
  assert summary["users"] == len(USERS) and summary["flagged_users"] == 0
  assert summary["flags"]["truncated"] > 0  # tiny users have 15..40 ratings
  # Chunks no larger than the users (rounded up to the 4 devices), not
  # the default 256.
  assert summary["chunk_users"] == 32
  query = np.arange(exp.store.num_items)
  for user in (1, 2, 7, 30):
    items, ratings = file_support(path, exp, user)
    want = core_predictions(exp, meta_params, user, items, ratings, query)
    got = loaded.predict(user, np.asarray(exp.store.item_ids)[query])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert loaded.user(user).known and loaded.user(user).source == "export"


def test_a_user_without_ratings_is_served_the_cold_shares(run, exported):
  """The export's meta-parameters hold the cold shares and each user's
  leaves `warm`: a user the export lacks is served at the cold shares, an
  exported one (adapted on ratings) at the shares, whatever the cold ones
  are."""
  _, exp, _ = run
  _, out, _, loaded = exported
  assert "cold_share" in loaded.meta_params and "warm" in loaded.adapted
  assert (np.asarray(loaded.adapted["warm"]) != 0).all()
  items = np.asarray(exp.store.item_ids)[:40]
  served = {}
  for cold in (0.0, 1.0):
    fresh = export.load(out)
    fresh._params = {**fresh._params,  # pylint: disable=protected-access
                     "share": np.ones(2, np.float32),
                     "cold_share": np.full(2, cold, np.float32)}
    served[cold] = (fresh.predict(10**9, items), fresh.predict(7, items))
  assert np.abs(served[0.0][0] - served[1.0][0]).max() > 1e-3
  np.testing.assert_array_equal(served[0.0][1], served[1.0][1])


def test_chunks_compile_once_per_support_bucket(run, tmp_path):
  workdir, exp, _ = run
  users, items, ratings = store_rows(exp, USERS)
  short = np.isin(users, [3, 4, 5])  # a second bucket: 5 ratings (tiny: 8)
  rank = np.arange(len(users)) - np.searchsorted(users, users)
  keep = ~short | (rank < 5)
  path = write_file(tmp_path / "r.csv", exp, users[keep], items[keep],
                    ratings[keep])
  summary = export.export_workdir(workdir, path, str(tmp_path / "e"),
                                  chunk_users=4)  # 8 chunks of 4 users
  assert summary["chunk_users"] == 4 and summary["users"] == 30
  assert summary["compiles"] == 2  # widths 8 and 16
  loaded = export.load(str(tmp_path / "e"))
  assert sorted(set(loaded.support_sizes.tolist()) - {15, 16}) == [5]


def test_the_folder_format(run, exported):
  _, exp, meta_params = run
  _, out, summary, loaded = exported
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  assert manifest["format"] == "metarec-export" and manifest["version"] == 3
  listed = {n for n in arrays(out)} | {"topk.jsonl"}
  assert set(manifest["files"]) == listed
  assert manifest["files"]["users.npy"]["bytes"] == os.path.getsize(
      os.path.join(out, "users.npy"))
  assert manifest["dtype"] == "float32" and manifest["num_users"] == 30
  np.testing.assert_array_equal(loaded.user_ids, USERS)
  assert isinstance(loaded.user_ids, np.memmap)
  adapted = manifest["params"]["adapted"]
  assert sorted(adapted) == sorted(
      p for p in meta.leaf_paths(meta_params["model"])
      if any(re.search(a, p) for a in exp.meta_config.adapt))
  for p, shape in adapted.items():
    stored = np.load(os.path.join(out, "params", "adapted", p + ".npy"),
                     mmap_mode="r")
    assert stored.shape == (30, *shape) and stored.dtype == np.float32
  for p, leaf in zip(meta.leaf_paths(meta_params["model"]),
                     jax.tree.leaves(meta_params["model"])):
    np.testing.assert_array_equal(
        np.load(os.path.join(out, "params", "meta", p + ".npy")), leaf)
  np.testing.assert_array_equal(np.load(os.path.join(out, "items.npy")),
                                exp.store.item_ids)
  assert summary["bytes_per_user"] > summary["adapted_bytes_per_user"] > 0
  assert not [n for n in os.listdir(os.path.dirname(out)) if "tmp" in n]


def test_a_second_export_writes_identical_arrays(run, exported, tmp_path):
  workdir, _, _ = run
  path, out, _, _ = exported
  again = str(tmp_path / "again")
  export.export_workdir(workdir, path, again, top_k=5)
  first, second = arrays(out), arrays(again)
  assert sorted(first) == sorted(second)
  for name in first:
    np.testing.assert_array_equal(first[name], second[name], err_msg=name)
  assert (open(os.path.join(out, "topk.jsonl")).read()
          == open(os.path.join(again, "topk.jsonl")).read())


def test_top_k_excludes_rated_items_sorted_k_entries(run, exported):
  _, exp, _ = run
  path, out, _, loaded = exported
  users, items, _, _ = ratings_io.read_ratings(path, exp.store)
  lines = open(os.path.join(out, "topk.jsonl")).read().splitlines()
  assert [json.loads(l)["user"] for l in lines] == USERS
  stored = np.load(os.path.join(out, "topk_scores.npy"))
  for row, line in enumerate(lines):
    rec = json.loads(line)
    # Each score's text reads back as the float32 ranked (7 digits: not).
    np.testing.assert_array_equal(np.float32(rec["scores"]), stored[row])
    rated = set(items[users == rec["user"]].tolist())
    assert len(rec["items"]) == len(rec["scores"]) == 5
    assert not rated & set(rec["items"])
    assert rec["scores"] == sorted(rec["scores"], reverse=True)
    np.testing.assert_allclose(loaded.predict(rec["user"], rec["items"]),
                               rec["scores"], rtol=1e-5, atol=1e-5)
    best = loaded.recommend(rec["user"], 5)
    assert [i for i, _ in best] == rec["items"]
    # Brute force: the best unrated items of the whole catalogue.
    scores = loaded.predict(rec["user"], exp.store.item_ids)
    unrated = [(s, i) for i, s in zip(exp.store.item_ids.tolist(), scores)
               if i not in rated]
    assert min(rec["scores"]) >= max(
        s for s, i in unrated if i not in rec["items"]) - 1e-5


@pytest.mark.parametrize("items, target", [
    (8193, 8192), (131073, 131072), (70000, 65536), (3706, 1024),
    (3706, 131072), (1, 1024), (100, 43690), (1000000, 8192)])
def test_catalogue_blocks_are_equal_and_pad_less_than_a_block(items, target):
  """Blocks of a fixed size padded the last one whole: a catalogue one
  item above the block was scored twice over (8,193 items, 16 users)."""
  from metarec_jax.export import compute  # pylint: disable=g-import-not-at-top
  blocks, index = compute.catalogue_blocks(
      {"f": np.arange(items, dtype=np.int32)}, items, np, target)
  count, width = index.shape
  assert width % 8 == 0 and (width <= target or width == 8)
  assert count == -(-items // target) or width == 8
  assert count * width - items < 8 * count  # at most 7 a block
  np.testing.assert_array_equal(index.reshape(-1)[:items], np.arange(items))
  assert (index.reshape(-1)[items:] == -1).all()
  np.testing.assert_array_equal(blocks["f"].reshape(-1)[:items],
                                np.arange(items))


def test_the_exports_top_k_looks_rated_items_up_block_by_block(monkeypatch):
  """A mask of the whole catalogue per user, made before the scan, held a
  chunk's 256 users times the catalogue at once: 4,917 MB of temporaries
  for 1M items, 124 MB looked up per block."""
  import jax  # pylint: disable=g-import-not-at-top
  from metarec_jax.export import compute  # pylint: disable=g-import-not-at-top
  shapes = []
  lookup = compute.rated_lookup

  def recording(rated):
    is_rated = lookup(rated)
    return lambda idx: (shapes.append(idx.shape), is_rated(idx))[1]

  monkeypatch.setattr(compute, "rated_lookup", recording)
  monkeypatch.setattr(compute, "rank_items", lambda m, p, f, u, feats: (
      feats["x"].astype(np.float32),) * 2)
  blocks, index = compute.catalogue_blocks(
      {"x": np.arange(100, dtype=np.int32)}, 100, np, 16)
  served, top, _ = jax.jit(lambda r: compute.top_k_one(
      None, None, {}, {}, r, blocks, index, 3))(np.array([99, -1], np.int32))
  assert shapes == [index.shape[1:]]  # one block's items at a time
  assert top.tolist() == [98, 97, 96] and served.tolist() == [98, 97, 96]


@pytest.mark.parametrize("block", [8, 24])
def test_served_top_k_scans_the_catalogue_in_blocks(exported, monkeypatch,
                                                     block):
  """The server's top k (`Export.top_k_users`) scored the whole catalogue
  in one piece per user: a batch of 16 users of a 1M-item catalogue held
  16 GB of activations. In blocks of any size (the last one padded) it
  ranks as the export's own top k and `recommend` do."""
  from metarec_jax.export import compute  # pylint: disable=g-import-not-at-top
  _, out, _, whole = exported
  monkeypatch.setattr(compute, "ITEM_BLOCK", block)
  monkeypatch.setattr(compute, "RANKED_PAIRS", 1)  # blocks of ITEM_BLOCK
  scored = []  # the items each traced scoring call takes at once
  rank_items = compute.rank_items
  monkeypatch.setattr(compute, "rank_items", lambda *a: (
      scored.append(len(next(iter(a[-1].values())))), rank_items(*a))[1])
  loaded = export.load(out)  # its jitted top k traced with the small blocks
  assert whole.num_items > 3 * block
  users = [whole.user(u) for u in USERS[:5]] + [whole.user("nobody")]
  fast = {p: np.stack([np.asarray(m.fast[p]) for m in users])
          for p in users[0].fast}
  features = {n: np.stack([np.asarray(m.user_features[n]) for m in users])
              for n in users[0].user_features}
  excluded = np.zeros((len(users), whole.num_items), bool)
  for i, m in enumerate(users):
    excluded[i, m.rated] = True
  k = 7
  def width(target):  # the block of that target: equal blocks, <= target
    width = compute.catalogue_blocks({}, whole.num_items, np, target)[1]
    assert width.shape[1] <= target and width.size - whole.num_items < (
        8 * width.shape[0])  # no whole block of padding
    return width.shape[1]

  got = loaded.top_k_users(fast, features, excluded, k)
  assert scored == [width(block)]
  want = whole.top_k_users(fast, features, excluded, k)
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  for i, m in enumerate(users):
    assert [i_ for i_, _ in m.recommend(k)] == whole.item_ids[
        got[1][i]].tolist()
  # A batch takes RANKED_PAIRS // B items a step, at least ITEM_BLOCK.
  monkeypatch.setattr(compute, "RANKED_PAIRS", 2 * block * len(users))
  scored.clear()
  np.testing.assert_array_equal(export.load(out).top_k_users(
      fast, features, excluded, k)[1], want[1])
  assert scored == [width(2 * block)]


def test_the_top_k_benchmark_reports_memory_and_time(exported):
  """tools/bench_topk.py: the served top k's figures on a tiled catalogue."""
  _, out, _, _ = exported
  run = subprocess.run([sys.executable, os.path.join(ROOT, "tools",
                                                     "bench_topk.py"),
                        f"--export={out}", "--items=5000", "--users=4",
                        "--k=7", "--rounds=1"], capture_output=True,
                       text=True, cwd=ROOT, timeout=600, env=env_with())
  assert run.returncode == 0, run.stderr
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert set(result) == {"items", "users", "k", "temp_mb", "median_seconds",
                         "peak_rss_mb"}
  assert result["items"] == 5000 and result["median_seconds"] > 0
  bad = subprocess.run([sys.executable, os.path.join(ROOT, "tools",
                                                     "bench_topk.py"),
                        f"--export={out}", "--users=0"], capture_output=True,
                       text=True, cwd=ROOT, timeout=600, env=env_with())
  assert bad.returncode == 2 and "--users: 0 is not >= 1" in bad.stderr


def test_users_served_the_meta_parameters_do_not_share_their_leaves(
    exported):
  """`UserModel.fast` of every unknown or rating-less user was the
  export's own dict: setting one user's leaf changed them all."""
  _, _, _, loaded = exported
  one, other = loaded.user("nobody"), loaded.user("nobody else")
  empty = loaded.adapt([])
  path = next(iter(one.fast))
  before = np.array(other.fast[path])
  one.fast[path] = one.fast[path] + 1.0
  np.testing.assert_array_equal(other.fast[path], before)
  np.testing.assert_array_equal(empty.fast[path], before)
  np.testing.assert_array_equal(loaded.user("third").fast[path], before)


def test_a_float_of_a_whole_number_is_that_integer_user(exported):
  """A pandas column of integer ids with one missing value is float: user
  `1.0` was served the meta-parameters where `1` and `"1"` were user 1."""
  _, _, _, loaded = exported
  items = loaded.item_ids[:5].tolist()
  want = loaded.predict(1, items)
  for same in (1.0, np.float64(1.0), np.float32(1.0)):
    np.testing.assert_array_equal(loaded.predict(same, items), want)
    assert loaded.user(same).known
  assert not loaded.user(1.5).known
  # And so are the item ids of such a column (they were unknown items).
  floats = np.asarray(items, np.float64)
  np.testing.assert_array_equal(loaded.predict(1, floats), want)
  np.testing.assert_array_equal(loaded.item_index(floats.astype(np.float32)
                                                  if max(items) < 2**24
                                                  else floats),
                                loaded.item_index(items))
  assert not loaded.known_items([items[0] + 0.5, np.nan, 1e300]).any()


def test_item_ids_that_are_no_list_are_refused(exported):
  """A generator was reported as the unknown item `<generator ...>`, a set
  too (unordered: its scores in no order asked), and a 2-D array was
  flattened in silence."""
  _, _, _, loaded = exported
  items = loaded.item_ids[:6].tolist()
  for odd in ((i for i in items), set(items), map(int, items),
              dict.fromkeys(items)):
    with pytest.raises(TypeError, match="a list or an array of them"):
      loaded.predict(1, odd)
  with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
    loaded.predict(1, np.asarray(items).reshape(2, 3))
  np.testing.assert_array_equal(loaded.predict(1, tuple(items)),
                                loaded.predict(1, np.asarray(items)))
  assert loaded.predict(1, items[0]).shape == (1,)  # one id


def test_recommend_among_candidates(exported):
  _, _, _, loaded = exported
  rated = set(loaded.item_ids[loaded.rated_items[
      loaded.rated_offsets[0]:loaded.rated_offsets[1]]].tolist())
  candidates = [i for i in range(1, 40) if i not in rated][:6]
  candidates += sorted(rated)[:3]
  best = loaded.recommend(1, 4, candidates=candidates)
  assert len(best) == 4 and not {i for i, _ in best} & rated
  assert {i for i, _ in best} <= set(candidates)
  scores = dict(zip(candidates, loaded.predict(1, candidates)))
  assert [s for _, s in best] == sorted(
      [float(scores[i]) for i in candidates if i not in rated],
      reverse=True)[:4]
  with pytest.raises(KeyError, match="not in the export's catalogue"):
    loaded.predict(1, [1, 99999])
  # Text ids are read as the store writes integers: "2" is item 2, while
  # "02" and "+2" (2 to Python's `int`) are no item of it.
  assert loaded.predict(1, ["2"]).tolist() == loaded.predict(1, [2]).tolist()
  for text in ("02", "+2", " 2_0"):
    with pytest.raises(KeyError, match="not in the export's catalogue"):
      loaded.predict(1, [text])


def test_bfloat16_export_is_close_to_float32(run, exported, tmp_path):
  workdir, exp, _ = run
  path, _, _, f32 = exported
  out = str(tmp_path / "bf16")
  summary = export.export_workdir(workdir, path, out, dtype="bfloat16",
                                  top_k=5)
  bf16 = export.load(out)
  # topk.jsonl ranks the leaves as stored: what serving ranks from them.
  with open(os.path.join(out, layout.TOPK_FILE)) as f:
    for line in f:
      row = json.loads(line)
      live = bf16.recommend(row["user"], 5)
      assert [i for i, _ in live] == row["items"], row["user"]
      np.testing.assert_allclose([s for _, s in live], row["scores"],
                                 rtol=1e-6)
  assert summary["dtype"] == "bfloat16" and bf16.dtype == "bfloat16"
  for p, stored in bf16.adapted.items():
    assert stored.dtype == np.uint16
    want = np.asarray(f32.adapted[p])
    got = layout.decode(stored, "bfloat16")
    np.testing.assert_allclose(got, want, rtol=2**-8, atol=1e-30)
  assert summary["adapted_bytes_per_user"] * 2 == pytest.approx(
      f32.manifest["summary"]["adapted_bytes_per_user"])
  items = exp.store.item_ids
  for user in (1, 30):
    np.testing.assert_allclose(bf16.predict(user, items),
                               f32.predict(user, items), atol=0.05)


def test_unknown_user_is_served_from_the_meta_parameters(run, exported,
                                                         caplog):
  _, exp, meta_params = run
  _, _, _, loaded = exported
  user = loaded.user(123)  # in the user table, not in the export
  assert not user.known and user.source == "meta"
  query = np.arange(20)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    got = loaded.predict(123, exp.store.item_ids[query])
  assert "not in the export" in caplog.text
  tables = exp.tables
  features = tables.rows(np.array([122]), query[None],
                         np.zeros((1, 20), np.float32),
                         np.ones((1, 20), bool))["features"]
  want = exp.model.predict(meta_params["model"],
                           jax.tree.map(lambda a: a[0], features))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  stranger = loaded.user(10**6)  # nowhere: the "missing" user features
  assert stranger.source == "meta"
  assert stranger.flags & layout.NOT_IN_USER_TABLE
  assert all((v == 0).all() for v in stranger.user_features.values())


def test_adapt_a_new_user_equals_exporting_that_user(run, exported,
                                                     tmp_path):
  workdir, exp, _ = run
  _, _, _, without = exported  # users 1..30
  newcomer = 31
  users, items, ratings = store_rows(exp, [newcomer])
  assert len(users) > MAX_SUPPORT  # also checks the max_support rule
  path = write_file(tmp_path / "r.csv", exp, users, items, ratings)
  export.export_workdir(workdir, path, str(tmp_path / "one"))
  exported_user = export.load(str(tmp_path / "one")).user(newcomer)
  pairs = list(zip(*ratings_io.read_ratings(path, exp.store)[1:3]))
  pairs.append((99999, 4.0))  # an unknown item is skipped
  adapted = without.adapt(pairs, user_id=newcomer)
  assert adapted.source == "adapted" and not adapted.known
  assert adapted.skipped_items == 1 and adapted.support_size == MAX_SUPPORT
  assert adapted.flags & layout.TRUNCATED
  for p, value in exported_user.fast.items():
    np.testing.assert_allclose(adapted.fast[p], value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(adapted.predict(exp.store.item_ids),
                             exported_user.predict(exp.store.item_ids),
                             rtol=1e-5, atol=1e-5)
  assert ([i for i, _ in adapted.recommend(5)]
          == [i for i, _ in exported_user.recommend(5)])
  nothing = without.adapt([(99999, 3.0)])
  assert nothing.flags & layout.NO_RATINGS
  np.testing.assert_array_equal(nothing.predict([1, 2]),
                                without.user(10**6).predict([1, 2]))
  with pytest.raises(ValueError, match="scale"):
    without.adapt([(1, 9.0)])
  # An unknown id of another type skips only itself, not the user's
  # integer ids with it (it once made every rating unknown).
  mixed = without.adapt(pairs[:-1] + [("abc", 4.0)], user_id=newcomer)
  assert mixed.skipped_items == 1
  for p, value in adapted.fast.items():
    np.testing.assert_allclose(mixed.fast[p], value, rtol=1e-6, atol=1e-7)
  # A rating export takes pairs only: the string "25" was read as item 2
  # rated 5, and bare integers failed deep inside.
  for bad in (["25", "34"], [25, 30], "25", None):
    with pytest.raises(ValueError, match=r"\(item_id, rating\) pairs"):
      without.adapt(bad)
  assert adapted.recommend(0) == []
  for k in (-1, 2.5, "3"):
    with pytest.raises(ValueError, match="k must be a whole number >= 0"):
      adapted.recommend(k)


def test_non_integer_ids_are_skipped_and_counted(run, tmp_path, caplog):
  workdir, exp, _ = run
  users, items, ratings = store_rows(exp, [1, 2])
  path = write_file(tmp_path / "ids.csv", exp, users, items, ratings)
  with open(path, "a") as f:  # the store's ids are integers
    f.write("2,x99,3\nanna,1,4\nanna,2,5\nbob,1,2\n")
  out = str(tmp_path / "ids")
  with caplog.at_level(logging.WARNING, logger="metarec"):
    summary = export.export_workdir(workdir, path, out)
  assert summary["users"] == 2
  assert summary["skipped_items"] == 1 and summary["skipped_users"] == 2
  assert any(f"ids.csv:{len(users) + 2}: item id 'x99' is not an integer"
             in r.getMessage() for r in caplog.records)
  loaded = export.load(out)
  flags = dict(zip(loaded.user_ids.tolist(), loaded.flags.tolist()))
  assert flags[2] & layout.SKIPPED_ITEMS and not flags[1] & layout.SKIPPED_ITEMS


def test_odd_users_and_items(run, tmp_path):
  workdir, exp, meta_params = run
  users, items, ratings = store_rows(exp, [1, 2])
  rows = [(int(u), int(i), float(r)) for u, i, r in zip(users, items, ratings)]
  rows += [(9000, 1, 4.0), (9000, 2, 2.0), (9000, 3, 5.0)]  # no user row
  rows += [(3, 99991, 4.0), (3, 99992, 1.0)]  # only unknown items
  rows += [(2, 99993, 3.0)]  # one unknown item among known ones
  rows += [(1, int(items[0]), 1.0)]  # a repeated (user, item): last wins
  u, i, r = (np.array(c) for c in zip(*rows))
  path = write_file(tmp_path / "odd.csv", exp, u, i, r, shuffle_seed=None)
  out = str(tmp_path / "odd")
  summary = export.export_workdir(workdir, path, out)
  assert summary["users"] == 4
  assert summary["skipped_items"] == 3 and summary["skipped_users"] == 0
  assert summary["duplicate_ratings"] == 1
  assert summary["flagged_users"] == 2  # 9000 and 3
  loaded = export.load(out)
  flags = dict(zip(loaded.user_ids.tolist(), loaded.flags.tolist()))
  assert flags[9000] == layout.NOT_IN_USER_TABLE
  assert flags[3] == layout.NO_RATINGS | layout.SKIPPED_ITEMS
  assert flags[2] & layout.SKIPPED_ITEMS and flags[1] & layout.TRUNCATED
  # No rating left: exactly the meta-parameters.
  user3 = loaded.user(3)
  for p, value in user3.fast.items():
    np.testing.assert_array_equal(
        value, np.asarray(
            traverse_util.flatten_dict(meta_params["model"], sep="/")[p]))
  assert user3.support_size == 0 and len(user3.rated) == 0
  # Not in the user table: missing features, adapted on its ratings.
  stranger = loaded.user(9000)
  assert all((v == 0).all() for v in stranger.user_features.values())
  want = core_predictions(exp, meta_params, 9000,
                          np.array([0, 1, 2]), np.array([4.0, 2.0, 5.0],
                                                        np.float32),
                          np.arange(10))
  np.testing.assert_allclose(stranger.predict(exp.store.item_ids[:10]), want,
                             rtol=1e-5, atol=1e-5)
  # The repeated item keeps its last rating, in user 1's support set.
  sup, sup_r = file_support(path, exp, 1)
  first_item = int(ratings_io.lookup(exp.store.item_ids, items[:1])[0])
  assert sup[-1] == first_item and sup_r[-1] == 1.0
  np.testing.assert_allclose(
      loaded.predict(1, exp.store.item_ids),
      core_predictions(exp, meta_params, 1, sup, sup_r,
                       np.arange(exp.store.num_items)), rtol=1e-5, atol=1e-5)
  # --unknown_users=skip leaves 9000 out and counts it.
  skipped = export.export_workdir(workdir, path, str(tmp_path / "skip"),
                                  unknown_users="skip")
  assert skipped["users"] == 3 and skipped["skipped_users"] == 1
  assert 9000 not in export.load(str(tmp_path / "skip")).user_ids


def test_served_without_the_work_directory(run, exported, tmp_path):
  workdir, exp, _ = run
  path, _, _, reference = exported
  copy = str(tmp_path / "work")
  shutil.copytree(workdir, copy)
  out = str(tmp_path / "export")
  export.export_workdir(copy, path, out, top_k=3)
  shutil.rmtree(copy)
  loaded = export.load(out)
  items = exp.store.item_ids[:25]
  np.testing.assert_array_equal(loaded.predict(5, items),
                                reference.predict(5, items))
  assert len(loaded.recommend(5, 3)) == 3
  assert loaded.adapt([(1, 5.0), (2, 1.0)], user_id=5).support_size == 2


def test_learned_inner_rates_are_exported(run, exported):
  """Meta-SGD: export and serving-time adaptation use the learned rates."""
  _, exp, meta_params = run
  path, _, _, loaded = exported
  assert jax.tree.leaves(meta_params["inner"])
  assert loaded.manifest["params"]["inner"]
  items, ratings = file_support(path, exp, 4)
  want = core_predictions(exp, meta_params, 4, items, ratings, np.arange(30))
  np.testing.assert_allclose(loaded.predict(4, exp.store.item_ids[:30]), want,
                             rtol=1e-5, atol=1e-5)
  pairs = list(zip(exp.store.item_ids[items].tolist(), ratings.tolist()))
  np.testing.assert_allclose(
      loaded.adapt(pairs, user_id=4).predict(exp.store.item_ids[:30]), want,
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("anchor", [True, False])
def test_idemb_exports_its_user_embedding(tmp_path, anchor):
  """IDEmb, plain and anchored: scalar and vector adapted leaves, the
  virtual item_id feature; the exported predictions are the core's."""
  workdir = str(tmp_path / "idemb")
  config = config_io.apply_overrides(
      config_io.load_config_file(config_path("tiny")),
      [("model.name", "idemb"), ("model.anchor", str(anchor).lower()),
       ("train.num_steps", "2"),
       ("train.eval_every_steps", "0"), ("log.histogram_every_steps", "0"),
       ("checkpoint.every_steps", "2")])
  train_and_evaluate(config, workdir)
  exp = experiment.build(config_io.read_workdir_config(workdir), workdir)
  meta_params = jax.device_get(
      load_state(exp, workdir, runtime.make_mesh()).params)
  path = write_file(tmp_path / "r.csv", exp, *store_rows(exp, [8, 9]))
  out = str(tmp_path / "export")
  export.export_workdir(workdir, path, out, top_k=4)
  loaded = export.load(out)
  # `warm`: the cold shares' (anchored) or the cold blend's (plain).
  scalars = (("user_bias", "base_bias", "warm") if anchor
             else ("user/bias", "warm"))
  assert loaded.manifest["params"]["adapted"] == {
      "user/embedding": [8], **{name: [] for name in scalars}}
  assert loaded.adapted[scalars[0]].shape == (2,)
  items, ratings = file_support(path, exp, 9)
  query = np.arange(exp.store.num_items)
  want = core_predictions(exp, meta_params, 9, items, ratings, query)
  np.testing.assert_allclose(loaded.predict(9, exp.store.item_ids), want,
                             rtol=1e-5, atol=1e-5)
  line = json.loads(open(os.path.join(out, "topk.jsonl")).readlines()[1])
  assert line["user"] == 9
  assert line["items"] == [i for i, _ in loaded.recommend(9, 4)]


# ------------------------------------------------------------- integrity


def damaged_copy(exported, tmp_path, name, damage):
  """A copy of the export with `damage(path)` done to its file `name`."""
  copy = str(tmp_path / "copy")
  shutil.copytree(exported[1], copy)
  path = os.path.join(copy, name)
  damage(path)
  return copy, path


def overwrite(offset, data=b"\x7f\xff" * 8):
  def damage(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      f.seek(offset if offset >= 0 else size + offset)
      f.write(data)
    assert os.path.getsize(path) == size
  return damage


def empty(path):
  open(path, "w").close()


@pytest.mark.parametrize("name, damage, problem", [
    ("params/meta/decision/fc1/kernel.npy", overwrite(-100), "content"),
    ("users.npy", overwrite(130), "content"),
    ("flags.npy", overwrite(8, b"{'descr': garbage"), "content"),  # header
    ("users.npy", empty, "0 bytes where the manifest records"),
])
def test_a_damaged_file_is_refused_at_load_naming_it(exported, tmp_path,
                                                     name, damage, problem):
  copy, path = damaged_copy(exported, tmp_path, name, damage)
  with pytest.raises(export.DamagedExport) as e:
    export.load(copy)
  message = str(e.value)
  assert message.startswith(f"{path}: {problem}") and "\n" not in message
  assert "the export is damaged; export again" in message


@pytest.mark.parametrize("edit", [
    lambda m: m["files"].pop("params/meta/decision/fc1/kernel.npy"),
    lambda m: m.update(files={}), lambda m: m.update(dtype="bfloat16"),
    lambda m: m.update(rating_max=10.0)])
def test_an_edited_manifest_is_refused_at_load(exported, tmp_path, edit):
  """The manifest's own digest (format 3): a record dropped, or a value
  changed, is found (the file a dropped record covered was served
  unchecked; a changed dtype ended in a flax traceback)."""
  copy = str(tmp_path / "copy")
  shutil.copytree(exported[1], copy)
  assert subprocess.run(["sha256sum", "--check", "--quiet",
                         "manifest.sha256"], cwd=copy).returncode == 0
  path = os.path.join(copy, "manifest.json")
  manifest = json.load(open(path))
  edit(manifest)
  json.dump(manifest, open(path, "w"), indent=1)
  with pytest.raises(export.DamagedExport, match=f"^{path}: differs from the"
                     " digest in manifest.sha256: the export is damaged"):
    export.load(copy)
  os.remove(os.path.join(copy, "manifest.sha256"))
  out = metarec_here("export", "--verify", f"--out={copy}")
  assert_one_line_error(out, "manifest.sha256: missing: the manifest's"
                        " digest")


def test_a_manifest_cut_short_is_a_damaged_export(exported, tmp_path):
  # It was a plain InputError, which a caller catching DamagedExport missed.
  copy = str(tmp_path / "copy")
  shutil.copytree(exported[1], copy)
  path = os.path.join(copy, "manifest.json")
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])
  with pytest.raises(export.DamagedExport, match=f"^{path}: unreadable"
                     " manifest: "):
    export.load(copy)


@pytest.mark.parametrize("content", ["", '{"x": 1}\n'])
def test_a_damaged_manifest_digest_is_named(exported, tmp_path, content):
  # It blamed the intact manifest.json ("differs from the digest in
  # manifest.sha256").
  copy = str(tmp_path / "copy")
  shutil.copytree(exported[1], copy)
  path = os.path.join(copy, "manifest.sha256")
  open(path, "w").write(content)
  with pytest.raises(export.DamagedExport, match=f"^{path}: not a sha256"
                     " line of manifest.json: the export is damaged"):
    export.load(copy)


def test_a_non_finite_meta_parameter_is_refused_at_load(exported, tmp_path):
  """A NaN in a meta-parameter under digests that match (rewritten by
  hand, or an export of format 1, which records none): the export loaded
  and served null scores, and its warnings blamed meta.inner_lr (helper
  D). No checkpoint holds one; the load now names the file."""
  from metarec_jax.export import checksums  # pylint: disable=g-import-not-at-top
  name = "params/meta/decision/fc1/kernel.npy"
  copy = str(tmp_path / "copy")
  shutil.copytree(exported[1], copy)
  path = os.path.join(copy, name)
  values = np.load(path)
  values.flat[3] = np.nan
  np.save(path, values)
  manifest_path = os.path.join(copy, layout.MANIFEST)
  manifest = json.load(open(manifest_path))
  manifest["files"] = checksums.record(copy, exclude=(layout.MANIFEST,
                                                      layout.MANIFEST_DIGEST))
  data = json.dumps(manifest).encode()
  open(manifest_path, "wb").write(data)
  open(os.path.join(copy, layout.MANIFEST_DIGEST), "w").write(
      layout._manifest_digest_line(data))  # pylint: disable=protected-access
  assert layout.verify(copy)["files"]  # the digests match
  with pytest.raises(InputError, match=f"^{path}: holds a NaN or an"
                     " infinity: no trained model's parameter does"):
    export.load(copy)


def test_per_user_arrays_are_hashed_whole_on_request(exported, tmp_path):
  name = "params/adapted/decision/fc1/kernel.npy"
  copy, path = damaged_copy(exported, tmp_path, name, overwrite(-100))
  assert os.path.getsize(path) > 2 * 4096  # beyond the head checked always
  export.load(copy)  # by design: sizes and heads only, no full read
  with pytest.raises(export.DamagedExport, match=f"^{path}: content differs"):
    export.load(copy, verify=True)
  out = metarec("export", "--verify", f"--out={copy}")
  assert_one_line_error(out, f"{path}: content differs from the sha256")
  good = metarec_here("export", "--verify", f"--out={exported[1]}")
  assert good.returncode == 0, good.stderr
  result = last_json(good)
  assert result["files"] == len(arrays(exported[1])) + 1  # and topk.jsonl
  assert result["bytes"] > 0 and "all match the manifest" in good.stdout
  # A flag it does not use is refused, not ignored (`--step=3` read as
  # "check that this is step 3's export", and passed).
  for flag in ("--step=3", "--top_k=5", "--config.train.lr=5"):
    out = metarec_here("export", "--verify", f"--out={exported[1]}", flag)
    assert_one_line_error(out, "it takes no " + flag.split("=")[0])


@pytest.mark.parametrize("damage, error", [
    (empty, "EOFError"), (overwrite(8, b"{'descr': garbage"), "Error")])
def test_format_1_loads_unverified_and_names_an_unreadable_file(
    exported, tmp_path, caplog, damage, error):
  """An export written before the checksums: still served, with a warning;
  a damaged array is an error naming it, whatever numpy raised."""
  copy, path = damaged_copy(exported, tmp_path, "users.npy", lambda p: None)
  manifest_path = os.path.join(copy, "manifest.json")
  manifest = json.load(open(manifest_path))
  del manifest["files"]
  manifest["version"] = 1
  json.dump(manifest, open(manifest_path, "w"))
  os.remove(os.path.join(copy, "manifest.sha256"))  # none before format 3
  with caplog.at_level(logging.WARNING, logger="metarec"):
    export.load(copy)
  assert "export format 1 records no checksums" in caplog.text
  with pytest.raises(InputError, match="format 1 records no checksums to"
                     " verify; export again"):
    export.load(copy, verify=True)
  damage(path)
  with pytest.raises(InputError) as e:
    export.load(copy)
  assert str(e.value).startswith(f"{path}: not a readable .npy array (")
  assert error in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- the CLI


def test_cli_prints_the_json_summary_last(run, exported, tmp_path):
  workdir, _, _ = run
  path, _, _, _ = exported
  out = metarec("export", f"--workdir={workdir}", f"--ratings={path}",
                f"--out={tmp_path / 'e'}", "--top_k=2", "--dtype=bfloat16",
                "--chunk_users=8")
  assert out.returncode == 0, out.stderr
  summary = last_json(out)
  for key in ("users", "seconds", "bytes_per_user", "out", "flagged_users",
              "skipped_users", "skipped_items"):
    assert key in summary
  assert summary["users"] == 30 and summary["out"] == str(tmp_path / "e")
  assert summary["dtype"] == "bfloat16" and summary["top_k"] == 2
  assert "exported 30 users" in out.stdout
  assert "exported 30/30 users" in out.stderr  # plain progress, no terminal
  assert len(open(tmp_path / "e" / "topk.jsonl").readlines()) == 30


@pytest.mark.parametrize("args, message", [
    (["--dtype=float16"], "--dtype: must be one of float32, bfloat16"),
    (["--top_k=-1"], "--top_k: must be >= 0"),
    (["--unknown_users=maybe"], "--unknown_users: must be one of"),
    (["--config.data.nosuch=1"], "unknown config key 'data.nosuch'"),
])
def test_cli_bad_flags_are_one_line_errors(run, exported, tmp_path, args,
                                           message):
  workdir, _, _ = run
  path, _, _, _ = exported
  # One case as a real process, the others in this one (`metarec_here`).
  run = metarec if args[0].startswith("--dtype") else metarec_here
  out = run("export", f"--workdir={workdir}", f"--ratings={path}",
            f"--out={tmp_path / 'e'}", *args)
  assert_one_line_error(out, message)
  assert not os.path.exists(tmp_path / "e")


def test_cli_refuses_a_foreign_out_and_bad_files(run, exported, tmp_path):
  workdir, _, _ = run
  path, _, _, _ = exported
  foreign = tmp_path / "mine"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("keep me")
  out = metarec_here("export", f"--workdir={workdir}", f"--ratings={path}",
                     f"--out={foreign}")
  assert_one_line_error(out, "is not an earlier export")
  assert os.listdir(foreign) == ["notes.txt"]
  # Refused before any work: the ratings file is never read (a large one
  # was parsed for seconds, into gigabytes, first).
  out = metarec_here("export", f"--workdir={workdir}",
                     f"--ratings={tmp_path / 'never_read.csv'}",
                     f"--out={foreign}")
  assert_one_line_error(out, "is not an earlier export")
  # ... as is an --out below a file (exit 1, "File exists", after the
  # export's work).
  out = metarec_here("export", f"--workdir={workdir}",
                     f"--ratings={tmp_path / 'never_read.csv'}",
                     f"--out={foreign / 'notes.txt' / 'e'}")
  assert_one_line_error(out, "notes.txt is a file, not a folder")
  bad = tmp_path / "bad.csv"
  # A non-integer id is skipped and counted (see
  # test_non_integer_ids_are_skipped_and_counted); a rating that is not a
  # number still refuses the file.
  bad.write_text("user,item,rating\n1,2,3\n1,2,x\n")
  out = metarec_here("export", f"--workdir={workdir}", f"--ratings={bad}",
                     f"--out={tmp_path / 'e'}")
  assert_one_line_error(out, "bad.csv:3: rating 'x' is not a finite number")
  out = metarec_here("export", f"--workdir={workdir}",
                     f"--out={tmp_path / 'e'}")
  assert_one_line_error(out, "--ratings is required")
  assert not os.path.exists(tmp_path / "e")


def big_ratings_file(path, exp, num_users=20000):
  """Many users (ids beyond the user table) rating the tiny catalogue."""
  rng = np.random.default_rng(1)
  per_user = 12
  users = np.repeat(np.arange(10**5, 10**5 + num_users), per_user)
  items = rng.integers(0, exp.store.num_items, len(users))
  ratings = rng.integers(1, 6, len(users)).astype(np.float64)
  ratings_io.write_ratings(path, users, exp.store.item_ids[items], ratings,
                           exp.store)
  return str(path)


def test_a_killed_export_leaves_no_partial_folder(run, exported, tmp_path):
  workdir, exp, _ = run
  small, _, _, _ = exported
  big = big_ratings_file(tmp_path / "big.csv", exp)
  out = tmp_path / "export"

  def kill_midway():
    err = tmp_path / "stderr.txt"
    proc = start("export", f"--workdir={workdir}", f"--ratings={big}",
                 f"--out={out}", "--chunk_users=8", stderr_path=err)
    wait_for(lambda: "exported " in err.read_text(), proc=proc, timeout=120)
    assert proc.poll() is None, "the export finished before the kill"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".export.tmp-")]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

  kill_midway()
  assert not os.path.exists(out)  # nothing, not half a folder
  done = metarec("export", f"--workdir={workdir}", f"--ratings={small}",
                 f"--out={out}")
  assert done.returncode == 0, done.stderr
  before = arrays(out)
  manifest = open(out / "manifest.json").read()
  kill_midway()
  assert open(out / "manifest.json").read() == manifest  # still the old one
  after = arrays(out)
  assert sorted(after) == sorted(before)
  for name in before:
    np.testing.assert_array_equal(after[name], before[name])
  # The next export cleans up what the killed one left beside `out`.
  done = metarec("export", f"--workdir={workdir}", f"--ratings={small}",
                 f"--out={out}")
  assert done.returncode == 0, done.stderr
  assert sorted(os.listdir(tmp_path)) == ["big.csv", "export", "stderr.txt"]


def test_a_second_export_to_the_same_out_is_refused_while_one_runs(
    run, exported, tmp_path):
  """One writer per output: the second is refused in one line (it removed
  the running one's temporary folder as stale, which then failed)."""
  workdir, exp, _ = run
  small, _, _, _ = exported
  big = big_ratings_file(tmp_path / "big.csv", exp)
  out = tmp_path / "export"
  err = tmp_path / "stderr.txt"
  proc = start("export", f"--workdir={workdir}", f"--ratings={big}",
               f"--out={out}", "--chunk_users=8", stderr_path=err)
  try:
    wait_for(lambda: "exported " in err.read_text(), proc=proc, timeout=120)
    assert proc.poll() is None, "the export finished before the second"
    second = metarec("export", f"--workdir={workdir}", f"--ratings={small}",
                     f"--out={out}")
    assert_one_line_error(second, "another process is writing it now")
    proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err.read_text()
  assert export.load(out).num_users > 100
  assert sorted(os.listdir(tmp_path)) == ["big.csv", "export", "stderr.txt"]


def test_a_terminated_export_removes_its_folder_and_says_so(run, exported,
                                                           tmp_path):
  """SIGTERM (a job scheduler, `kill`, `timeout`) used to end the process
  as SIGKILL does, leaving `.export.tmp-*` beside `out` and no word."""
  workdir, exp, _ = run
  small, _, _, _ = exported
  big = big_ratings_file(tmp_path / "big.csv", exp)
  out = tmp_path / "export"
  done = metarec("export", f"--workdir={workdir}", f"--ratings={small}",
                 f"--out={out}")
  assert done.returncode == 0, done.stderr
  manifest = open(out / "manifest.json").read()
  err = tmp_path / "stderr.txt"
  proc = start("export", f"--workdir={workdir}", f"--ratings={big}",
               f"--out={out}", "--chunk_users=8", stderr_path=err)
  wait_for(lambda: "exported " in err.read_text(), proc=proc, timeout=120)
  assert proc.poll() is None, "the export finished before the signal"
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM
  assert err.read_text().strip().splitlines()[-1] == (
      "metarec export: terminated (SIGTERM)")
  assert sorted(os.listdir(tmp_path)) == ["big.csv", "export", "stderr.txt"]
  assert open(out / "manifest.json").read() == manifest  # the old one


def test_mapped_array_keeps_what_was_written_after_releasing_its_pages(
    tmp_path):
  path = str(tmp_path / "a.npy")
  mapped = layout.MappedArray(path, np.float32, (1000, 7))
  want = np.arange(7000, dtype=np.float32).reshape(1000, 7)
  mapped.array[:500] = want[:500]
  mapped.release()  # the written rows leave memory, not the file
  mapped.array[500:] = want[500:]
  assert (mapped.array[:500] == want[:500]).all()
  mapped.close()
  mapped.close()  # idempotent
  assert (np.load(path) == want).all()


def test_the_json_summary_has_the_fields_design_md_lists(exported):
  """docs/design.md's `export` JSON names every field, nested ones too."""
  with open(os.path.join(ROOT, "docs", "design.md")) as f:
    text = f.read()
  listed = text.split("- `export`: `", 1)[1].split("}`", 1)[0]
  summary = exported[2]
  fields = set(summary) | set(summary["flags"])
  assert set(re.findall(r'"(\w+)":', listed)) == fields


def test_an_export_of_a_model_this_metarec_lacks_is_one_line(exported,
                                                            tmp_path):
  """An export whose config names a model this version does not have (a
  newer metarec's, its digest intact) was a ValueError traceback from the
  model factory, exit 1, in `serve` and `export.load`."""
  copy = str(tmp_path / "copy")
  shutil.copytree(exported[1], copy)
  path = os.path.join(copy, "manifest.json")
  manifest = json.load(open(path))
  manifest["config"]["model"]["name"] = "mf"
  data = json.dumps(manifest, indent=1).encode()
  open(path, "wb").write(data)
  open(os.path.join(copy, "manifest.sha256"), "w").write(
      layout._manifest_digest_line(data))  # pylint: disable=protected-access
  problem = (f"{path}: config key model.name='mf': must be one of")
  with pytest.raises(InputError, match=f"^{re.escape(problem)}"):
    export.load(copy)
  # A training-only key whose rule tightened after an older metarec wrote
  # the export (train.prefetch was unbounded) does not keep it from
  # serving: the review found it refused.
  manifest["config"]["model"]["name"] = "melu"
  manifest["config"]["train"]["prefetch"] = 100
  data = json.dumps(manifest, indent=1).encode()
  open(path, "wb").write(data)
  open(os.path.join(copy, "manifest.sha256"), "w").write(
      layout._manifest_digest_line(data))  # pylint: disable=protected-access
  assert export.load(copy).num_users == export.load(exported[1]).num_users
  manifest["config"]["model"]["name"] = "mf"
  data = json.dumps(manifest, indent=1).encode()
  open(path, "wb").write(data)
  open(os.path.join(copy, "manifest.sha256"), "w").write(
      layout._manifest_digest_line(data))  # pylint: disable=protected-access
  out = metarec_here("serve", f"--export={copy}", "--port=0",
                     f"--log_dir={tmp_path / 'log'}")
  assert_one_line_error(out, "(written by another metarec version? serve it"
                        " with that one)")
  # A newer metarec's meta_config field (a helper's new algorithm key) was
  # a TypeError traceback from MetaConfig.
  manifest["config"]["model"]["name"] = "melu"
  manifest["meta_config"]["layer_lr"] = []
  data = json.dumps(manifest, indent=1).encode()
  open(path, "wb").write(data)
  open(os.path.join(copy, "manifest.sha256"), "w").write(
      layout._manifest_digest_line(data))  # pylint: disable=protected-access
  with pytest.raises(InputError, match=f"^{re.escape(path)}: meta_config: .*"
                     "'layer_lr'.* \\(written by another metarec version"):
    export.load(copy)
