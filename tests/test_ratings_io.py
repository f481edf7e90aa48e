"""Ratings files in a store's input format, new users' tasks, task files."""

import json
import os

import numpy as np
import pytest

import datafiles
from metarec_jax.data import splits
from metarec_jax.data.convert import movielens, ratings_io, synthetic
from metarec_jax.data import store as store_lib
from metarec_jax.errors import InputError
from metarec_jax.eval import task_files
from metarec_jax.eval.user_file import new_user_tasks


@pytest.fixture(scope="module")
def ml_store(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("ml")
  movielens.load(datafiles.tiny_ml1m(str(tmp / "files")), tmp / "store")
  return store_lib.open_store(tmp / "store")


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
  path = tmp_path_factory.mktemp("synth") / "store"
  synthetic.generate(synthetic.SyntheticSpec(
      num_users=60, num_items=150, min_ratings=50, max_ratings=110,
      new_item_fraction=0.4, director_vocab=10, actor_vocab=10,
      zip_vocab=10), path)
  return store_lib.open_store(path)


def test_movielens_ratings_round_trip(ml_store, tmp_path):
  path = str(tmp_path / "r.dat")
  ratings_io.write_ratings(path, np.array([3, 1]), np.array([20, 10]),
                           np.array([4.0, 1.0]), ml_store)
  assert open(path).read() == "3::20::4\n1::10::1\n"
  users, items, ratings, lines = ratings_io.read_ratings(path, ml_store)
  assert (users.tolist(), items.tolist(), ratings.tolist(), lines.tolist()) == (
      [3, 1], [20, 10], [4.0, 1.0], [1, 2])
  ratings_io.write_ratings(path, np.array([1]), np.array([30]),
                           np.array([2.0]), ml_store, timestamps=np.array([7]))
  assert open(path).read() == "1::30::2::7\n"
  assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


@pytest.mark.parametrize("content, message", [
    (b"1::10\n", "r.dat:1: 2 field(s) separated by '::', expected 3 or 4"),
    (b"1::10::5\n1::10::4::5::6\n", "r.dat:2: 5 field(s)"),
    (b"1::10::5\n1::10::4::5\n", "r.dat:2: 4 field(s) separated by '::',"
                                 " expected 3 like line 1"),
    (b"1::10::5\nx1::10::5\n", "r.dat:2: user id 'x1' is not an integer"),
    (b"1::ten::5\n", "r.dat:1: item id 'ten' is not an integer"),
    # Numbers to Python's `int`, other ids to `data prepare` (kept as text).
    (b"1::010::5\n", "r.dat:1: item id '010' is not written as the store"
                     " writes integer ids (`10`)"),
    (b"+1::10::5\n", "r.dat:1: user id '+1' is not written as the store"),
    (b"1::1_0::5\n", "r.dat:1: item id '1_0' is not an integer"),
    (b"1::10::5::1_000\n", "r.dat:1: timestamp '1_000' is not a time"),
    (b"1::10::4\n1::10::1_0\n", "r.dat:2: rating '1_0' is not a finite"
                                 " number"),
    (b"1::10::6\n", "r.dat:1: rating 6 is not a whole-number rating on the"
                    " scale 1 to 5"),
    (b"1::10::4.5\n", "r.dat:1: rating 4.5 is not a whole-number rating"),
    (b"1::10::five\n", "r.dat:1: rating 'five' is not a finite number"),
    (b"1::10::nan\n", "r.dat:1: rating 'nan' is not a finite number"),
    (b"\n\n", "r.dat: empty file"),
    (b"1::10::5\n2::10::\xe9\n", "r.dat:2: byte 0xe9 at column 8 is not"
                                 " valid utf-8 text"),
])
def test_bad_ratings_files_name_file_and_line(ml_store, tmp_path, content,
                                              message):
  path = tmp_path / "r.dat"
  path.write_bytes(content)
  with pytest.raises(InputError) as e:
    ratings_io.read_ratings(path, ml_store)
  assert message in e.value.message


@pytest.mark.parametrize("bad, message", [
    (b"9", "r.dat:2: rating 9 is not a whole-number rating on the scale 1"
           " to 5 (and 7 more such lines: 4, 6, 8, 10, 12, ...)"),
    (b"x", "r.dat:2: rating 'x' is not a finite number (and 7 more such"
           " lines: 4, 6, 8, 10, 12, ...)"),
    (b"1.5e", "r.dat:2: rating '1.5e' is not a finite number (and 7 more"),
])
def test_an_error_counts_the_other_lines_with_the_same_problem(
    ml_store, tmp_path, bad, message):
  """A file with many bad lines was fixed one run at a time: each error
  named its first line only."""
  path = tmp_path / "r.dat"
  path.write_bytes(b"".join(b"1::10::" + (bad if i % 2 else b"3") + b"\n"
                            for i in range(16)))
  with pytest.raises(InputError) as e:
    ratings_io.read_ratings(path, ml_store)
  assert e.value.message.startswith(str(tmp_path / message))
  path.write_bytes(b"1::10::3\n1::10::" + bad + b"\n1::10::3\n")
  with pytest.raises(InputError) as e:
    ratings_io.read_ratings(path, ml_store)
  assert "more such" not in e.value.message  # the only such line
  path.write_bytes(b"1::10::3\n1::10::3::4::5\n1::10\n1::10::3\n")
  with pytest.raises(InputError) as e:
    ratings_io.read_ratings(path, ml_store)
  assert ("r.dat:2: 5 field(s) separated by '::', expected 3 like line 1"
          " (and 1 more line of another field count: 3) (this run reads"
          in e.value.message)
  path.write_bytes(b"1::10::3\n1::x::3\n1::y::3\n")
  with pytest.raises(InputError) as e:
    ratings_io.read_ratings(path, ml_store)
  assert e.value.message.endswith("r.dat:2: item id 'x' is not an integer"
                                  " (and 1 more such line: 3)")


def test_a_huge_bad_field_is_cut_in_the_error(ml_store, tmp_path):
  path = tmp_path / "r.dat"
  path.write_bytes(b"1::10::5\n" + b"x" * 50_000_000 + b"::10::5\n")
  with pytest.raises(InputError) as e:
    ratings_io.read_ratings(path, ml_store)
  message = e.value.message
  assert message.startswith(f"{path}:2: user id 'xxxxx")
  assert message.endswith("... (50,000,000 characters) is not an integer")
  assert len(message) < len(str(path)) + 120


def test_nul_bytes_in_ids_are_refused_not_stripped(tmp_path):
  fmt = ratings_io.RatingsFormat(delimiter=",", rating_min=1, rating_max=5,
                                 user_id_type="str", item_id_type="str")
  path = tmp_path / "r.csv"
  path.write_bytes(b"ann,i1,5\nbob\x00,i2,4\n")
  with pytest.raises(InputError) as e:
    ratings_io.parse_ratings(path, fmt)
  assert e.value.message == (f"{path}:2: a NUL byte at column 4 (a damaged"
                             " file, or not text)")


def test_unknown_users_and_items_are_errors_at_their_line(ml_store, tmp_path):
  path = tmp_path / "r.dat"
  path.write_text("1::10::5\n1::99::5\n7::10::3\n")
  args = ratings_io.read_ratings(path, ml_store)
  with pytest.raises(InputError, match=r"r.dat:2: unknown item 99 \(not in"
                                       " the movielens-1m data\\)"):
    ratings_io.to_indices(path, ml_store, args[0], args[1], args[3])
  path.write_text("7::10::3\n")
  args = ratings_io.read_ratings(path, ml_store)
  with pytest.raises(InputError, match="r.dat:1: unknown user 7"):
    ratings_io.to_indices(path, ml_store, args[0], args[1], args[3])


def test_an_unknown_id_error_counts_the_other_lines_with_one(ml_store,
                                                             tmp_path):
  # A file of many users the run lacks is not fixed one run at a time.
  path = tmp_path / "r.dat"
  path.write_text("1::10::5\n7000::10::5\n1::99::5\n1::10::4\n"
                  "7001::4000::3\n")
  args = ratings_io.read_ratings(path, ml_store)
  with pytest.raises(InputError) as e:
    ratings_io.to_indices(path, ml_store, args[0], args[1], args[3])
  assert e.value.message == (
      f"{path}:2: unknown user 7000 (not in the movielens-1m data)"
      " (and 2 more lines with an unknown id: 3, 5)")


def test_stores_without_a_format_use_csv_with_a_header(synth_store, tmp_path):
  assert "ratings_format" not in synth_store.manifest
  path = str(tmp_path / "r.csv")
  ratings_io.write_ratings(path, synth_store.user_ids[:2],
                           synth_store.item_ids[:2], np.array([5.0, 2.0]),
                           synth_store)
  assert open(path).read() == "user,item,rating\n1,1,5\n2,2,2\n"
  assert ratings_io.read_ratings(path, synth_store)[0].tolist() == [1, 2]


@pytest.mark.parametrize("text, problem", [
    ("user\titem\trating\n1\t1\t5\n", "no column 'user' in the header"
     " (columns: user\\titem\\trating); the header is one field split on"
     " ',': is the delimiter '\\t'?"),
    ("user,item\n1,1\n", "no column 'rating' in the header (columns: user,"
     " item)"),
    ("user,item,rating\n1,1,5\n2,2\n", "2 field(s) separated by ',',"
     " expected 3 like line 1"),
])
def test_a_file_laid_out_otherwise_names_the_runs_layout(synth_store,
                                                         tmp_path, text,
                                                         problem):
  # `eval --ratings` and `export --ratings` read files in the run's input
  # format, which no flag changes: a tab-separated file asked "is the
  # delimiter '\t'?" without saying what the run reads.
  path = tmp_path / "r.csv"
  path.write_text(text)
  layout = ("(this run reads files laid out as its data: header, fields"
            " separated by ',' (user=user, item=item, rating=rating), utf-8)")
  for read in (ratings_io.read_ratings, ratings_io.parse_in_format):
    with pytest.raises(InputError) as e:
      read(path, synth_store)
    assert e.value.problem == f"{problem} {layout}"
  # A file without a header, one field per line: the same hint as a header.
  path.write_text("a\tb\t5\n")
  with pytest.raises(InputError, match=r"r\.csv:1: 1 field\(s\) separated by"
                     r" ',', expected at least 3; line 1 is one field split"
                     r" on ',': is the delimiter '\\t'\?$"):
    ratings_io.parse_ratings(path, ratings_io.RatingsFormat(
        delimiter=",", rating_min=1, rating_max=5, user_id_type="str",
        item_id_type="str"))
  # Other problems are the file's own: no layout.
  path.write_text("user,item,rating\n1,1,9\n")
  with pytest.raises(InputError, match=r"scale 1 to 5$"):
    ratings_io.read_ratings(path, synth_store)


def own_ratings(store, users):
  """(user ids, item ids, ratings) of `users` (indices) from the store."""
  rows = [(store.user_ids[u], store.item_ids[store.items[k]],
           store.ratings[k]) for u in users
          for k in range(store.offsets[u], store.offsets[u + 1])]
  return [np.array(c) for c in zip(*rows)]


def test_new_user_tasks_follow_the_protocol(synth_store, tmp_path):
  s = synth_store
  users = np.arange(0, 60, 3)
  u, i, r = own_ratings(s, users)
  path = str(tmp_path / "new.csv")
  # A duplicate at the end: the last rating of the pair counts.
  u, i, r = np.append(u, u[0]), np.append(i, i[0]), np.append(r, 6 - r[0])
  ratings_io.write_ratings(path, u, i, r, s)
  spec = splits.ProtocolSpec(seed=1)
  tasks = new_user_tasks(s, path, spec)
  assert set(tasks) == {"W", "UC", "IC", "UIC"}
  assert len(tasks["W"]) == len(tasks["IC"]) == 0
  assert len(tasks["UC"]) > 0 and len(tasks["UIC"]) > 0
  given = {(a, b): c for a, b, c in zip(u.tolist(), i.tolist(), r.tolist())}
  for name, new in (("UC", False), ("UIC", True)):
    t = tasks[name]
    assert set(t.users.tolist()) <= set(users.tolist())
    sizes = np.diff(t.offsets)
    assert sizes.min() >= 13 and sizes.max() <= 100
    assert (s.item_new[t.items] == new).all()
    owner = np.repeat(t.users, sizes)
    for k in range(len(t.items)):
      key = (int(s.user_ids[owner[k]]), int(s.item_ids[t.items[k]]))
      assert given[key] == t.ratings[k]
    assert (np.add.reduceat(t.is_query, t.offsets[:-1]) == 10).all()
  # Every user with 13..100 existing-item ratings has a UC task.
  expected = [x for x in users if 13 <= (~s.item_new[
      s.items[s.offsets[x]:s.offsets[x + 1]]]).sum() <= 100]
  assert sorted(tasks["UC"].users.tolist()) == expected


def test_new_users_keep_each_pairs_latest_rating_by_timestamp(tmp_path):
  """A newest-first file (helper R: eval kept the older, later line)."""
  from metarec_jax import config_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.data.convert import prepare  # pylint: disable=g-import-not-at-top
  from conftest import config_path  # pylint: disable=g-import-not-at-top
  root = tmp_path / "shop"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating,ts\n" + "".join(
      f"{u},i{i},{1 + (i + u) % 5},{i}\n" for u in range(3) for i in range(20)))
  data = config_io.load_config_file(config_path("default")).data
  data.name, data.root = "generic", str(root)
  data.generic.timestamp_col = "ts"
  prepare.prepare(data, tmp_path / "store")
  store = store_lib.open_store(tmp_path / "store")
  path = tmp_path / "new.csv"
  path.write_text("user,item,rating,ts\n0,i0,5,100\n" + "".join(
      f"0,i{i},3,{50 - i}\n" for i in range(19, 0, -1)) + "0,i0,1,0\n")
  task = new_user_tasks(store, path, splits.ProtocolSpec(seed=1))["UC"]
  assert task.users.tolist() == [0] and len(task.items) == 20
  item = int(np.flatnonzero(store.item_ids == "i0")[0])
  assert task.ratings[task.items == item].tolist() == [5.0]


def test_write_tasks_round_trips_and_replaces_only_its_own_folder(
    synth_store, tmp_path):
  s = synth_store
  u, i, r = own_ratings(s, range(20))
  path = str(tmp_path / "new.csv")
  ratings_io.write_ratings(path, u, i, r, s)
  tasks = new_user_tasks(s, path, splits.ProtocolSpec())
  out = tmp_path / "tasks"
  task_files.write_tasks(out, tasks, s)
  summary = json.load(open(out / "tasks.json"))
  for name, t in tasks.items():
    assert summary["scenarios"][name]["tasks"] == len(t)
    support = ratings_io.read_ratings(out / name / "support.csv", s) if len(
        t) else None
    query = ratings_io.read_ratings(out / name / "query.csv", s) if len(
        t) else None
    if not len(t):
      continue
    assert len(query[0]) == 10 * len(t)
    assert len(support[0]) + len(query[0]) == len(t.items)
    np.testing.assert_array_equal(query[1], s.item_ids[t.items[t.is_query]])
    np.testing.assert_array_equal(support[2], t.ratings[~t.is_query])
  task_files.write_tasks(out, tasks, s)  # its own folder: replaced
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "keep.txt").write_text("mine")
  with pytest.raises(InputError, match="not a task folder"):
    task_files.write_tasks(foreign, tasks, s)
  assert os.listdir(foreign) == ["keep.txt"]
  assert sorted(os.listdir(tmp_path)) == ["foreign", "new.csv", "tasks"]
