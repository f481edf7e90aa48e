"""The generic loader: your own delimited files, string ids, list features."""

import os

import numpy as np
import pytest

import datafiles
from conftest import config_path
from metarec_jax import config_io
from metarec_jax.data.convert import describe, generic, parsing, prepare, ratings_io
from metarec_jax.data import store as store_lib
from metarec_jax.errors import InputError, excerpt


def data_config(root, **generic_keys):
  data = config_io.load_config_file(config_path("default")).data
  data.name = "generic"
  data.root = str(root)
  data.generic.update(generic_keys)
  return data


def vocab_of(store, name, row):
  vocab = store.vocab(name)
  return [vocab[i] for i in np.atleast_1d(row) if i]


@pytest.fixture
def shop(tmp_path):
  """String ids, a header, timestamps, quoted list columns, a duplicate."""
  root = tmp_path / "shop"
  datafiles.write(str(root / "ratings.csv"),
                  "user,item,rating,ts\n"
                  "alice,mug,4,10\n"
                  "bob,pen,3.5,5\n"
                  "alice,pen,2,3\n"
                  "\n"
                  "alice,mug,5,20\n"
                  "carol,ink,1,1\n")
  datafiles.write(str(root / "items.csv"),
                  'item,tags,maker,new\n'
                  'mug,"kitchen|gift|blue|big",Acme,1\n'
                  'pen,office,"Pens, Inc.",0\n'
                  'lamp,,Acme,1\n')  # lamp: nobody rated it
  datafiles.write(str(root / "users.csv"),
                  "user,country\nalice,FR\nbob,\ndave,US\n")
  return root


def test_a_repeated_pair_keeps_its_latest_rating_in_a_newest_first_file(
    tmp_path):
  """An `ORDER BY created_at DESC` export lists a re-rating first: the
  later line in the file is the older rating (helper D: it was kept)."""
  root = tmp_path / "desc"
  datafiles.write(str(root / "ratings.csv"),
                  "user,item,rating,ts\n1,a,5,300\n1,b,4,250\n1,a,1,100\n"
                  "2,a,2,7\n2,a,3,7\n")  # a tie in time: the later line
  for timestamps, expected in (("ts", {("1", "a"): 5.0, ("2", "a"): 3.0}),
                               ("", {("1", "a"): 1.0, ("2", "a"): 3.0})):
    prepare.prepare(data_config(root, timestamp_col=timestamps),
                    tmp_path / f"store{timestamps}")
    s = store_lib.open_store(tmp_path / f"store{timestamps}")
    users = np.repeat(s.user_ids, s.counts())
    got = {(str(u), str(s.item_ids[i])): float(r)
           for u, i, r in zip(users, s.items, s.ratings)}
    assert {k: got[k] for k in expected} == expected, timestamps
    assert s.manifest["duplicates"]["dropped"] == 2
    # ... and `data inspect` says so, with the rule.
    assert ("; 2 repeated (user, item) rows dropped (a (user, item) pair"
            " rated more than once keeps its last rating: the latest by"
            " timestamp where there are timestamps, then the later in the"
            " file)") in describe.format_summary(describe.summary(s))


def test_string_ids_lists_and_new_items(shop, tmp_path):
  data = data_config(shop, timestamp_col="ts", item_features="items.csv",
                     user_features="users.csv", categorical=("maker",
                                                             "country"),
                     lists=("tags",), new_item_col="new")
  data.list_pad.tags = 3
  prepare.prepare(data, tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  assert s.user_ids.tolist() == ["alice", "bob", "carol", "dave"]
  assert s.item_ids.tolist() == ["ink", "lamp", "mug", "pen"]
  assert s.counts().tolist() == [2, 1, 1, 0]
  # alice: by timestamp (pen at 3, mug at 20); the duplicate keeps 5 stars.
  assert s.item_ids[s.items[:2]].tolist() == ["pen", "mug"]
  assert s.ratings[:2].tolist() == [2.0, 5.0]
  assert s.ratings[2] == 3.5  # non-integer ratings are fine here
  tags = {f.name: f for f in s.features}["tags"]
  assert tags.kind == "list" and tags.max_len == 3
  assert vocab_of(s, "tags", s.item_features["tags"][2]) == [
      "kitchen", "gift", "blue"]
  assert vocab_of(s, "maker", s.item_features["maker"][3]) == ["Pens, Inc."]
  assert s.item_features["maker"][0] == 0  # ink is in no table
  assert vocab_of(s, "country", s.user_features["country"]) == ["FR", "US"]
  assert s.user_features["country"].tolist()[1:3] == [0, 0]
  assert s.item_new.tolist() == [False, True, True, False]
  fmt = ratings_io.store_format(s)
  assert fmt.user_id_type == "str" and fmt.header and fmt.timestamp == "ts"


def test_feature_tables_without_quotes_skip_the_csv_module(shop, tmp_path,
                                                           monkeypatch):
  """A side table was always read line by line through Python's csv
  module (quoting on, not "auto"): a 1M-row item table took twice the
  time and memory of the byte tokenizer that a ratings file without
  quotes gets. With quotes in the file (the fixture's) the csv module
  still reads them."""
  from metarec_jax.data.convert import delimited  # pylint: disable=g-import-not-at-top
  read = []
  csv_rows = delimited._csv_rows  # pylint: disable=protected-access
  monkeypatch.setattr(delimited, "_csv_rows", lambda *a, **k: (
      read.append(k), csv_rows(*a, **k))[1])
  datafiles.write(str(shop / "plain.csv"), "item,maker\nmug,Acme\npen,Bic\n")
  data = data_config(shop, item_features="plain.csv", categorical=("maker",))
  prepare.prepare(data, tmp_path / "plain")
  assert not read
  s = store_lib.open_store(tmp_path / "plain")
  makers = dict(zip(s.item_ids.tolist(), s.item_features["maker"]))
  assert vocab_of(s, "maker", [makers["mug"], makers["pen"]]) == ["Acme",
                                                                  "Bic"]
  data = data_config(shop, item_features="items.csv", categorical=("maker",))
  prepare.prepare(data, tmp_path / "quoted")
  assert read  # "Pens, Inc." is one quoted field
  s = store_lib.open_store(tmp_path / "quoted")
  assert vocab_of(s, "maker", s.item_features["maker"][3]) == ["Pens, Inc."]


def test_no_header_positions_tabs_integer_ids_and_years(tmp_path):
  root = tmp_path / "log"
  datafiles.write(str(root / "r.tsv"), "x\t10\t7\t2\n"
                                       "x\t9\t2\t10\n"
                                       "x\t10\t7\t5\n")
  datafiles.write(str(root / "items.tsv"), "id\tyear\tgenres\n"
                                           "7\t2001\ta;b\n"
                                           "2\t\tb\n"
                                           "11\t1990\t\n")
  data = data_config(root, ratings="r.tsv", delimiter="\\t", header=False,
                     user_col="1", item_col="2", rating_col="3",
                     rating_min=0.0, rating_max=10.0, item_features="items.tsv",
                     lists=("genres",), list_sep=";", new_item_col="year",
                     new_item_year=2000)
  prepare.prepare(data, tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  assert s.user_ids.dtype == np.int64 and s.user_ids.tolist() == [9, 10]
  assert s.item_ids.tolist() == [2, 7, 11]  # numeric order
  assert s.item_new.tolist() == [False, True, False]
  assert {f.name: f.max_len for f in s.features} == {"genres": 2}
  assert s.counts().tolist() == [1, 1]  # (10, 7) twice: the last stays
  assert s.ratings.tolist() == [10.0, 5.0]
  fmt = ratings_io.store_format(s)
  assert (fmt.delimiter, fmt.user, fmt.extension) == ("\t", 1, "tsv")


def test_id_features_and_configuration_errors(shop, tmp_path):
  # A feature table whose columns are not named: an error naming them.
  with pytest.raises(InputError, match=r"no feature fields.*\(items.csv has"
                     r" tags, maker, new\)"):
    prepare.prepare(data_config(shop, item_features="items.csv"),
                    tmp_path / "a")
  with pytest.raises(InputError, match="'colour' is in no feature table"):
    prepare.prepare(data_config(shop, item_features="items.csv",
                                categorical=("colour",)), tmp_path / "b")
  with pytest.raises(InputError, match="unknown key"):
    data = data_config(shop)
    data.generic.nosuch = 1
    generic.spec_of(data)
  with pytest.raises(InputError, match=r"ratings.csv:1: no column 'when' in"
                     r" the header \(columns: user, item, rating, ts\)"):
    prepare.prepare(data_config(shop, timestamp_col="when",
                                id_features=True), tmp_path / "c")
  prepare.prepare(data_config(shop, id_features=True), tmp_path / "d")
  s = store_lib.open_store(tmp_path / "d")
  assert [f.name for f in s.features] == ["user_key", "item_key"]
  assert s.vocab("item_key")[1:] == ["ink", "mug", "pen"]
  assert not os.path.exists(tmp_path / "a")  # failed builds leave nothing


def test_a_ratings_file_alone_takes_its_ids_as_features(shop, tmp_path):
  said = []
  prepare.prepare(data_config(shop), tmp_path / "store", log=said.append)
  s = store_lib.open_store(tmp_path / "store")
  assert [f.name for f in s.features] == ["user_key", "item_key"]
  assert s.vocab("item_key")[1:] == ["ink", "mug", "pen"]
  assert any("the user and item ids are the features" in m for m in said)


def timed_store(tmp_path, name, *lines):
  """The store of a ratings file `name` of `user,item,rating,when` lines
  with `when` its timestamp column."""
  root = tmp_path / "timed"
  datafiles.write(str(root / name),
                  "user,item,rating,when\n" + "".join(f"{l}\n" for l in lines))
  prepare.prepare(data_config(root, ratings=name, timestamp_col="when"),
                  tmp_path / name.replace(".", "_"))
  return store_lib.open_store(tmp_path / name.replace(".", "_"))


def test_iso_dates_order_a_users_ratings_and_bad_ones_name_their_line(
    tmp_path):
  s = timed_store(tmp_path, "iso.csv", "alice,mug,4,2021-03-05",
                  "alice,pen,2,2021-03-04T23:00:00-02:00",  # 01:00 UTC 5th
                  "alice,ink,5,2021-03-04 10:22:01.5",
                  "bob,pen,3,2021-03-04T10:22:01Z")
  items = s.item_ids[s.items[:3]].tolist()
  assert items == ["ink", "mug", "pen"]  # alice's, in time order
  k = timed_store(tmp_path, "clock.csv", "alice,mug,4,1614853321.75",
                  "alice,pen,3,1614853320.5")
  assert k.item_ids[k.items].tolist() == ["pen", "mug"]  # a float clock
  assert k.timestamps.tolist() == [1614853320, 1614853321]
  # A value of another kind than the first line's names its line.
  for name, first, message in (
      ("bad.csv", "2021-03-05", "'yesterday' is not an ISO 8601 date or"
                                " time .* as the first line's is"),
      ("clock2.csv", "1614853321.75", "'yesterday' is not a finite number"),
      ("mixed.csv", "17", "'yesterday' is not an integer")):
    with pytest.raises(InputError, match=f"{name}:3: timestamp {message}"):
      timed_store(tmp_path, name, f"alice,mug,4,{first}",
                  "bob,pen,3,yesterday")
  # A first value of no kind is blamed itself, not as "not an ISO 8601
  # date as the first line's is (line 2)" at line 2 (the first line).
  for first in ("", "yesterday", "nan"):
    with pytest.raises(InputError) as e:
      timed_store(tmp_path, "none.csv", f"alice,mug,4,{first}",
                  "bob,pen,3,17")
    assert str(e.value).endswith(
        f"none.csv:2: timestamp {first!r} is not a time (an integer, a number"
        " of seconds, or an ISO 8601 date or time like 2021-03-04)")
  # ... counting the other lines of no kind (a column of empty times).
  with pytest.raises(InputError) as e:
    timed_store(tmp_path, "empty.csv", "alice,mug,4,", "bob,pen,3,17",
                "carol,cup,2,", "dave,mug,1,2021-03-05")
  assert str(e.value).endswith("(and 1 more such line: 4)")


def test_a_file_split_on_the_wrong_delimiter_says_which_it_uses(tmp_path):
  root = tmp_path / "tsv"
  datafiles.write(str(root / "ratings.csv"),
                  "user\titem\trating\nalice\tmug\t4\n")
  with pytest.raises(InputError, match=r"ratings.csv:1: no column 'user'"
                     r".*split on ',': is the delimiter '\\t'\?"
                     r" \(data\.generic\.delimiter\)$"):
    prepare.prepare(data_config(root, id_features=True), tmp_path / "a")
  datafiles.write(str(root / "ratings.csv"), "alice\tmug\t4\n")  # no header
  with pytest.raises(InputError, match=r"ratings.csv:1: 1 field\(s\) .*split"
                     r" on ',': is the delimiter '\\t'\? \(data\.generic\."
                     r"delimiter\)$"):
    prepare.prepare(data_config(root, id_features=True, header=False,
                                user_col="0", item_col="1", rating_col="2"),
                    tmp_path / "a")
  datafiles.write(str(root / "ratings.csv"),
                  "user\titem\trating\nalice\tmug\t4\n")
  data = data_config(root, id_features=True, delimiter="\\t")
  prepare.prepare(data, tmp_path / "b")
  assert store_lib.open_store(tmp_path / "b").ratings.tolist() == [4.0]


def test_ratings_files_round_trip_in_the_store_format(shop, tmp_path):
  prepare.prepare(data_config(shop, id_features=True), tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  path = str(tmp_path / "out.csv")
  ratings_io.write_ratings(path, np.array(["bob", "alice"]),
                           np.array(["mug", "ink"]), np.array([4.5, 1.0]), s)
  # Every column of the dataset's header (`ts` is none of the roles here),
  # so that the lines append to its ratings file.
  assert open(path).read() == ("user,item,rating,ts\nbob,mug,4.5,\n"
                               "alice,ink,1,\n")
  users, items, ratings, lines = ratings_io.read_ratings(path, s)
  assert users.tolist() == ["bob", "alice"] and items.tolist() == ["mug", "ink"]
  assert ratings.tolist() == [4.5, 1.0] and lines.tolist() == [2, 3]
  u, i = ratings_io.to_indices(path, s, users, items, lines)
  assert s.user_ids[u].tolist() == ["bob", "alice"]
  datafiles.write(path, "user,item,rating\nbob,mug,4\nzoe,ink,1\n")
  with pytest.raises(InputError, match=r"out.csv:3: unknown user zoe"):
    ratings_io.to_indices(path, s, *ratings_io.read_ratings(path, s)[:2],
                          ratings_io.read_ratings(path, s)[3])


def test_melu_trains_on_string_ids(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "log"
  rows = ["who;what;stars"]
  for u in range(24):
    for i in rng.choice(60, 45, replace=False):
      rows.append(f"user-{u};item-{i};{rng.integers(1, 11)}")
  datafiles.write(str(root / "log.txt"), "\n".join(rows) + "\n")
  datafiles.write(str(root / "items.txt"), "id;tags;new\n" + "".join(
      f"item-{i};t{i % 3}/t{i % 5};{int(i >= 50)}\n" for i in range(60)))
  config = config_io.load_config_file(config_path("tiny"))
  config.data.name = "generic"
  config.data.root = str(root)
  config.data.generic.update(dict(
      ratings="log.txt", delimiter=";", user_col="who", item_col="what",
      rating_col="stars", rating_min=1.0, rating_max=10.0,
      item_features="items.txt", lists=("tags",), list_sep="/",
      new_item_col="new", id_features=True))
  config.train.tasks_per_step = 4
  # pylint: disable=g-import-not-at-top
  import jax
  from metarec_jax import experiment
  from metarec_jax.data.sampler import TrainSampler
  exp = experiment.build(config, str(tmp_path / "work"))
  assert exp.store.rating_range == (1.0, 10.0)
  assert exp.store.item_new.sum() == 10
  # The anchored default also reads the virtual item_id feature.
  from metarec_jax import models
  item_id = {"item_id"} if models.needs_item_id(config.model) else set()
  assert {f.name for f in exp.tables.specs} == {"tags", "user_key",
                                                "item_key"} | item_id
  # The ids of users and items without training ratings read the missing
  # row, as the server reads an id it does not know: their own rows are
  # never trained (eval scored new users with their random initial rows).
  seen = {"user": exp.split.train_counts() > 0,
          "item": np.bincount(exp.store.items[exp.split.train_positions],
                              minlength=exp.store.num_items) > 0}
  for side, table in (("user", exp.tables.user), ("item", exp.tables.item)):
    key = table[f"{side}_key"]
    assert (~seen[side]).any() and (key[~seen[side]] == 0).all()
    assert (key[seen[side]] > 0).all()
  sampler = TrainSampler(exp.split, exp.tables, exp.store.items,
                         exp.store.ratings, exp.sampler_spec())
  batch = jax.tree.map(lambda a: a[0], sampler.batch(0))
  params = exp.model.init(jax.random.PRNGKey(0))
  assert np.isfinite(float(exp.model.loss_fn(params, batch["query"])))


def test_a_list_pad_for_a_feature_of_ones_own_files_is_a_valid_override():
  config = config_io.load_config_file(config_path("default"))
  config_io.apply_overrides(config, [("data.list_pad.tags", "3")])
  assert config.data.list_pad.tags == 3
  with pytest.raises(InputError, match="expected an integer"):
    config_io.apply_overrides(config, [("data.list_pad.colours", "many")])
  with pytest.raises(InputError, match="unknown config key"):
    config_io.apply_overrides(config, [("data.generic.tags", "3")])


def test_quoted_ratings_fields_are_the_ids_of_the_feature_tables(tmp_path):
  # A spreadsheet's export quotes fields; an id may hold the delimiter.
  root = tmp_path / "quoted"
  datafiles.write(str(root / "ratings.csv"),
                  '"user","item","rating"\n'
                  '"u1","mug",4\n'
                  'u1,"Pens, Inc. ""blue""",3\n'
                  'u2,mug,"5"\n'
                  'u2,5" disk,2\n')  # a quote inside an unquoted field
  datafiles.write(str(root / "items.csv"),
                  'item,maker\nmug,Acme\n"Pens, Inc. ""blue""",Pens\n')
  prepare.prepare(data_config(root, item_features="items.csv",
                              categorical=("maker",)), tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  assert s.item_ids.tolist() == ['5" disk', 'Pens, Inc. "blue"', "mug"]
  assert s.user_ids.tolist() == ["u1", "u2"]
  assert vocab_of(s, "maker", s.item_features["maker"]) == ["Pens", "Acme"]
  assert sorted(s.ratings.tolist()) == [2.0, 3.0, 4.0, 5.0]
  # Written back in the store's format and read again: the same ids.
  path = str(tmp_path / "out.csv")
  ratings_io.write_ratings(path, s.item_ids[[1, 0]], s.item_ids[[0, 2]],
                           np.array([1.0, 2.0]), s)
  assert open(path).read() == ('user,item,rating\n'
                               '"Pens, Inc. ""blue""","5"" disk",1\n'
                               '"5"" disk",mug,2\n')
  users, items, _, _ = ratings_io.read_ratings(path, s)
  assert users.tolist() == ['Pens, Inc. "blue"', '5" disk']
  assert items.tolist() == ['5" disk', "mug"]


def test_integer_ids_beyond_64_bits_stay_strings(tmp_path):
  big = 10 ** 22
  root = tmp_path / "big"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n" + "".join(
      f"{big + u},{7 + i},{1 + (u + i) % 5}\n"
      for u in range(3) for i in range(4)))
  prepare.prepare(data_config(root), tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  assert s.user_ids.dtype.kind == "U"
  assert s.user_ids.tolist() == [str(big + u) for u in range(3)]
  assert s.item_ids.tolist() == [7, 8, 9, 10]  # these fit: integers


def test_a_ratings_file_without_line_feeds_reads_its_carriage_returns(
    tmp_path):
  root = tmp_path / "mac"
  (root).mkdir()
  (root / "ratings.csv").write_bytes(
      b"user,item,rating\ra,x,4\rb,y,3\r\rb,x,oops\r")
  with pytest.raises(InputError, match=r"ratings.csv:5: rating 'oops' is not"
                     r" a finite number"):
    prepare.prepare(data_config(root), tmp_path / "store")


def test_too_few_ratings_to_train_says_how_many_the_users_have(tmp_path):
  # 20 ratings a user: 10 are each user's evaluation query, 10 remain.
  root = tmp_path / "few"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n" + "".join(
      f"u{u},i{(u + i) % 30},{1 + (u * i) % 5}\n"
      for u in range(40) for i in range(20)))
  config = config_io.load_config_file(config_path("tiny"))
  config.data.name, config.data.root = "generic", str(root)
  # pylint: disable=g-import-not-at-top
  from metarec_jax import experiment
  from metarec_jax.data.sampler import TrainSampler
  exp = experiment.build(config, str(tmp_path / "work"))
  with pytest.raises(InputError, match=r"no training user has the 13"
                     r" training ratings .* the most any has is 10, .*"
                     r"leaving out the query ratings \(data.query_size\)"):
    TrainSampler(exp.split, exp.tables, exp.store.items, exp.store.ratings,
                 exp.sampler_spec())


def test_no_rating_of_an_existing_item_is_named_as_the_cause(tmp_path):
  """Every item new (a new-item column set to 1 throughout): the message
  advised more ratings or a smaller data.min_support, which cannot help."""
  root = tmp_path / "allnew"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n" + "".join(
      f"u{u},i{(u + i) % 30},{1 + (u * i) % 5}\n"
      for u in range(40) for i in range(25)))
  datafiles.write(str(root / "items.csv"), "item,new\n" + "".join(
      f"i{i},1\n" for i in range(30)))
  config = config_io.load_config_file(config_path("tiny"))
  config.data.name, config.data.root = "generic", str(root)
  config.data.generic.item_features = "items.csv"
  config.data.generic.new_item_col = "new"
  config.data.generic.id_features = True
  # pylint: disable=g-import-not-at-top
  from metarec_jax import experiment
  from metarec_jax.data.sampler import TrainSampler
  exp = experiment.build(config, str(tmp_path / "work"))
  with pytest.raises(InputError, match=r"the most any has is 0, .*: no"
                     r" rating is of an existing item: is every item new"):
    TrainSampler(exp.split, exp.tables, exp.store.items, exp.store.ratings,
                 exp.sampler_spec())
  # Not where no user is left to train on (every item existing).
  config = config_io.load_config_file(config_path("tiny"))
  config.eval.new_user_fraction = 0.999
  config.data.synthetic.new_item_fraction = 0.0
  exp = experiment.build(config, str(tmp_path / "work2"))
  with pytest.raises(InputError, match=r"the most any has is 0, .*: give"
                     r" users more ratings"):
    TrainSampler(exp.split, exp.tables, exp.store.items, exp.store.ratings,
                 exp.sampler_spec())


def test_rated_ids_without_a_feature_row_are_noted(shop, tmp_path):
  prepare.prepare(data_config(shop, item_features="items.csv",
                              user_features="users.csv",
                              categorical=("maker", "country")),
                  tmp_path / "store")
  notes = store_lib.open_store(tmp_path / "store").manifest["notes"]
  assert notes == [
      "1 of the 3 rated users have no row in users.csv: their features are"
      " missing (e.g. 'carol'; are the ids written as in users.csv?)",
      "1 of the 3 rated items have no row in items.csv: their features are"
      " missing (e.g. 'ink'; are the ids written as in items.csv?)"]
  # No rated id with a row: every rated item would be without features
  # (a store built with exit status 0 and a note).
  datafiles.write(str(shop / "items.csv"), "item,maker\nMUG,Acme\n")
  with pytest.raises(InputError) as e:
    prepare.prepare(data_config(shop, item_features="items.csv",
                                categorical=("maker",)), tmp_path / "other")
  assert e.value.message == (
      f"{shop / 'items.csv'}: none of the 3 rated items has a row here"
      " (ratings: 'ink'; here: 'MUG'): are the ids written alike (leading"
      " zeros, '1.0' for 1, case)?")
  assert not (tmp_path / "other").exists()


def test_a_feature_table_whose_ids_are_not_first_is_refused(tmp_path):
  # The first column was read as the ids: a maker's name repeated said
  # "item id Acme appears twice"; unique titles made every rated item one
  # without features, with only a note.
  root = tmp_path / "later"
  datafiles.write(str(root / "ratings.csv"),
                  "user,item,rating\nann,mug,4\nbob,pen,3\n")
  for head in ("maker,item", "title,item"):
    datafiles.write(str(root / "items.csv"),
                    f"{head}\nAcme,mug\nAcme2,pen\n")
    with pytest.raises(InputError) as e:
      prepare.prepare(data_config(root, item_features="items.csv",
                                  categorical=(head.split(",")[0],)),
                      tmp_path / head.replace(",", "_"))
    assert e.value.message == (
        f"{root / 'items.csv'}:1: the item ids must be the first column, but"
        " column 2 is named 'item' (as data.generic.item_col) and the first"
        f" {head.split(',')[0]!r}: put the id column first")
  # An id column named otherwise, first, reads as ever.
  datafiles.write(str(root / "items.csv"), "sku,maker\nmug,Acme\npen,B\n")
  prepare.prepare(data_config(root, item_features="items.csv",
                              categorical=("maker",)), tmp_path / "ok")


def test_list_rows_cut_to_their_padding_are_noted(tmp_path):
  root = tmp_path / "long"
  datafiles.write(str(root / "ratings.csv"),
                  "user,item,rating\nann,mug,4\nbob,pen,3\n")
  datafiles.write(str(root / "items.csv"),
                  "item,tags\nmug,a|b|c|d|e|a\npen,a|b\n")
  said = []
  prepare.prepare(data_config(root, item_features="items.csv",
                              lists=("tags",)), tmp_path / "s", log=said.append)
  assert not any("hold more than" in line for line in said)  # unpadded
  data = data_config(root, item_features="items.csv", lists=("tags",))
  data.list_pad.tags = 3
  prepare.prepare(data, tmp_path / "cut", log=said.append)
  note = ("list column 'tags' (item): 1 row holds more than the 3 entries"
          " kept (up to 5); the rest are dropped: raise data.list_pad.tags"
          " to keep more")
  assert note in store_lib.open_store(tmp_path / "cut").manifest["notes"]
  assert note in said


def test_a_feature_column_with_one_value_for_every_rated_row_is_noted(
    tmp_path):
  root = tmp_path / "flat"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n" + "".join(
      f"u{u},i{i},{1 + (u + i) % 5}\n" for u in range(4) for i in range(5)))
  # `i9` is never rated: its own colour does not make the column useful.
  datafiles.write(str(root / "items.csv"), "item,colour,size,tags,shape\n"
                  + "".join(f"i{i},red,,a|b,{'round' if i % 2 else 'flat'}\n"
                            for i in range(5)) + "i9,blue,L,c,round\n")
  said = []
  prepare.prepare(data_config(root, item_features="items.csv",
                              categorical=("colour", "size", "shape"),
                              lists=("tags",)),
                  tmp_path / "store", log=said.append)
  expected = [
      f"feature column {name!r} (item) {what} for all 5 rated items: it"
      " tells none apart and only adds parameters (is it the column meant,"
      " and filled?)"
      for name, what in (("colour", "has one value, 'red',"),
                         ("size", "is missing"),
                         ("tags", "has one value, 'a, b',"))]
  assert store_lib.open_store(tmp_path / "store").manifest["notes"] == expected
  assert all(note in said for note in expected)  # and told as it prepares


def test_a_rating_column_of_one_value_is_noted_unless_implicit(tmp_path):
  """A purchase log whose flag column was named the rating: train and eval
  ran on it in silence to an MAE of 0 (helper D)."""
  root = tmp_path / "flags"
  datafiles.write(str(root / "ratings.csv"), "user,item,bought\n" + "".join(
      f"u{u},i{i},1\n" for u in range(4) for i in range(5)))
  said = []
  data = data_config(root, rating_col="bought", rating_min=0, rating_max=1)
  prepare.prepare(data, tmp_path / "store", log=said.append)
  note = ("every rating of column 'bought' is 1: there is nothing to predict"
          " (a log of clicks or purchases? set data.implicit.enabled=true,"
          " with an empty data.generic.rating_col where every line is a"
          " positive)")
  assert store_lib.open_store(tmp_path / "store").manifest["notes"] == [note]
  assert note in said
  data.implicit.enabled = True  # what the note asks for: no such note
  said.clear()
  prepare.prepare(data, tmp_path / "clicks", log=said.append)
  assert not any("nothing to predict" in line for line in said)
  # Two values: nothing to say.
  datafiles.write(str(root / "ratings.csv"),
                  "user,item,bought\nu0,i0,1\nu0,i1,0\n")
  prepare.prepare(data_config(root, rating_col="bought", rating_min=0,
                              rating_max=1), tmp_path / "two")
  assert store_lib.open_store(tmp_path / "two").manifest["notes"] == []


def test_ids_that_differ_only_in_how_they_are_written_are_noted(tmp_path):
  """`007` in some rows and `7` in others, `u3` with and without a
  zero-width space: different ids, said (helper D)."""
  root = tmp_path / "zeros"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n"
                  "u1,7,4\nu2,007,3\nu2,8,5\nu3,+8,1\nu3\u200b,9,2\n")
  said = []
  prepare.prepare(data_config(root), tmp_path / "store", log=said.append)
  s = store_lib.open_store(tmp_path / "store")
  assert s.item_ids.tolist() == ["+8", "007", "7", "8", "9"]  # as written
  notes = [
      f"{n} {side} ids look like another when read ({example}): kept"
      f" as different {side}s, as written (zeros in front, a sign, invisible"
      " characters or another Unicode form of a letter make another id)"
      for n, side, example in ((2, "user", "'u3' and 'u3\\u200b'"),
                               (4, "item", "'+8' and '8', ..."))]
  assert s.manifest["notes"] == notes and all(n in said for n in notes)
  # Ids that only look alike to a machine are no note.
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n"
                  "u1,a7,4\nu2,A7,3\nu2,7a,5\nu3,70,1\nu3,7_0,2\n"
                  "u1,x2,3\nu1,x\u00b2,2\n")
  prepare.prepare(data_config(root), tmp_path / "other")
  assert store_lib.open_store(tmp_path / "other").manifest["notes"] == []


def test_an_off_scale_rating_names_the_keys_and_the_files_range(tmp_path):
  """A 1-10 file on the default scale: the error named no key to set
  (helper T)."""
  root = tmp_path / "ten"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n"
                  "u1,a,3\nu1,b,10\nu2,a,7\n")
  with pytest.raises(InputError) as e:
    prepare.prepare(data_config(root), tmp_path / "store")
  assert e.value.message.endswith(
      "ratings.csv:3: rating 10 is not a rating on the scale 1 to 5 (and 1"
      " more such line: 4); the file's ratings go from 3 to 10 (set"
      " data.generic.rating_min and data.generic.rating_max)")


def test_zeros_under_a_scale_are_named_as_interactions_without_a_rating(
    tmp_path):
  """Book-Crossing's file rates 1-10 and writes 0 for "interacted, not
  rated": the error said only to widen the scale, which trained a model
  that predicts 0.06 for every book and 'won' on the zeros (helper Q3)."""
  root = tmp_path / "bx"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n"
                  "u1,a,0\nu1,b,8\nu2,a,0\nu2,c,3\n")
  with pytest.raises(InputError) as e:
    prepare.prepare(data_config(root, rating_max=10.0), tmp_path / "store")
  assert e.value.message.endswith(
      "; 2 are 0: where 0 means interacted, not rated, it is no rating:"
      " drop those rows, or read the file as implicit feedback with"
      " data.generic.rating_min=0 (data.implicit.enabled=true and a"
      " data.implicit.threshold above 0: the rows at or above it are the"
      " positives)")
  assert "ratings.csv:2: rating 0 is not a rating on the scale 1 to 10" in (
      e.value.message)


def test_many_zeros_on_a_wider_scale_draw_a_note(tmp_path):
  """With the scale widened to take them, Book-Crossing-style zeros were
  learned as ratings in silence (helper Q3)."""
  root = tmp_path / "bx0"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n"
                  "u1,a,0\nu1,b,8\nu2,a,0\nu2,c,3\nu3,c,0\n")
  said = []
  prepare.prepare(data_config(root, rating_min=0.0, rating_max=10.0),
                  tmp_path / "store", log=said.append)
  assert any(m.startswith("60% of the ratings of column 'rating' are 0, the"
                          " lowest: where 0 means interacted, not rated")
             for m in said), said
  said.clear()  # a 0/1 scale's zeros are its ratings
  root01 = tmp_path / "likes"
  datafiles.write(str(root01 / "ratings.csv"), "user,item,rating\n"
                  "u1,a,0\nu1,b,1\nu2,a,0\nu2,c,1\n")
  prepare.prepare(data_config(root01, rating_min=0.0, rating_max=1.0),
                  tmp_path / "store01", log=said.append)
  assert not any("are 0, the lowest" in m for m in said), said


def test_a_scale_bound_float32_cannot_hold_opens(tmp_path):
  """float32(0.8) is 0.80000001: the store's check of its ratings against
  the manifest's scale refused the store it had just written (reviewer R)."""
  root = tmp_path / "fifths"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n"
                  "u1,a,0\nu1,b,0.8\nu2,a,0.2\nu2,c,0.6\n")
  prepare.prepare(data_config(root, rating_min=0.0, rating_max=0.8),
                  tmp_path / "store")
  store = store_lib.open_store(tmp_path / "store")
  assert store.rating_range == (0.0, 0.8)


def test_a_list_pad_of_no_list_column_is_said_to_be_ignored(shop, tmp_path):
  said = []
  spec = generic.spec_of(data_config(shop, item_features="items.csv",
                                     lists=("tags",)))
  generic.load(spec, str(shop), tmp_path / "store",
               list_pad={"tags": 3, "tgas": 2, "genre": 4}, log_fn=said.append)
  assert ("data.list_pad: tgas is no list column of data.generic.lists"
          " ('tags',): ignored") in said
  assert not any("genre" in line for line in said)  # a default key


def _prepared(tmp_path, name, raw: bytes, **keys):
  root = tmp_path / name
  root.mkdir()
  (root / "ratings.csv").write_bytes(raw)
  prepare.prepare(data_config(root, id_features=True, **keys),
                  tmp_path / f"{name}-store")
  return store_lib.open_store(tmp_path / f"{name}-store")


def test_ids_zero_and_minus_zero_stay_two_ids(tmp_path):
  s = _prepared(tmp_path, "zero", b"user,item,rating\na,0,4\na,-0,2\nb,5,3\n")
  assert sorted(s.item_ids.tolist()) == ["-0", "0", "5"]  # strings: -0 != 0
  assert s.num_ratings == 3


def test_times_within_one_second_keep_their_order(tmp_path):
  """A click log's events of one second: stored floored to the second,
  ordered by their fractions (they were stored in file order)."""
  k = timed_store(tmp_path, "sub.csv", "alice,mug,4,1614853320.75",
                  "alice,pen,3,1614853320.5", "alice,ink,2,1614853320.25")
  assert k.item_ids[k.items].tolist() == ["ink", "pen", "mug"]
  assert k.timestamps.tolist() == [1614853320] * 3
  i = timed_store(tmp_path, "subiso.csv", "alice,mug,4,2021-03-04T10:22:01.9Z",
                  "alice,pen,3,2021-03-04T10:22:01.1Z")
  assert i.item_ids[i.items].tolist() == ["pen", "mug"]
  # Whole seconds written without a fraction among a float clock's (the
  # first line's included) are that clock's, not "not an integer".
  w = timed_store(tmp_path, "whole.csv", "alice,mug,4,1614853321",
                  "alice,pen,3,1614853320.5", "alice,ink,2,1614853320")
  assert w.item_ids[w.items].tolist() == ["ink", "pen", "mug"]
  assert w.timestamps.tolist() == [1614853320, 1614853320, 1614853321]
  # ... but not integers float64 cannot hold (epoch nanoseconds): every
  # time was rounded, and the order lost.
  for name, lines in (("ns.csv", ("a,m,4,1614853320123456789",
                                   "a,p,3,1614853320123456700",
                                   "a,q,2,1614853320123456790.0")),
                      ("ns2.csv", ("a,q,2,1614853320123456790.0",
                                   "a,m,4,1614853320123456789"))):
    with pytest.raises(InputError, match=rf"{name}:2: timestamp"
                       r" '16148533201234567\d\d(\.0)?' is too large for a"
                       r" clock with fractions"):
      timed_store(tmp_path, name, *lines)


def test_numbers_pythons_float_reads_are_ratings_and_times(tmp_path):
  """A trailing no-break space (Excel) or another script's digits: read as
  Python's `float` reads them, with or without quotes in the file."""
  s = _prepared(tmp_path, "nbsp", "user;item;rating;ts\nalice;mug;4\u00a0;1.5"
                "\nbob;pen;\u0663;2.5\u00a0\n".encode(), delimiter=";",
                timestamp_col="ts")
  assert s.ratings.tolist() == [4.0, 3.0]
  assert s.timestamps.tolist() == [1, 2]


@pytest.mark.parametrize("first, later, message", [
    ("5.5", "1e300", "'1e300' is out of range"),
    ("1e300", "5.5", "'1e300' is out of range"),
    ("5", "99999999999999999999", "'99999999999999999999' is out of range"),
])
def test_times_beyond_int64_are_errors_at_their_line(tmp_path, first, later,
                                                     message):
  line = 2 if first != "5.5" and first != "5" else 3
  with pytest.raises(InputError, match=f"ratings.csv:{line}: timestamp"
                     f" {message}"):
    _prepared(tmp_path, "big", f"user,item,rating,ts\na,n,3,{first}\n"
              f"a,m,4,{later}\n".encode(), timestamp_col="ts")


def test_a_carriage_return_file_names_the_line_of_a_bad_byte(tmp_path):
  with pytest.raises(InputError, match=r"ratings.csv:3: byte 0xeb at column"
                     r" 3 is not valid utf-8 text \(another encoding\? set it,"
                     r" e\.g\. data\.generic\.encoding=latin-1\)$"):
    _prepared(tmp_path, "cr", b"user,item,rating\ralice,mug,4\rzo\xeb,pen,3\r")
  # The key it names reads the file (Book-Crossing's dumps are Latin-1).
  s = _prepared(tmp_path, "latin", b"user,item,rating\nzo\xeb,pen,3\n",
                encoding="latin-1")
  assert s.user_ids.tolist() == ["zo\u00eb"]
  with pytest.raises(InputError, match=r"ratings.csv:2: a NUL byte at column"
                     r" 2"):
    _prepared(tmp_path, "nul", b"user,item,rating\ra\0,mug,4\r")


def test_a_user_named_like_the_header_is_no_repeated_header(tmp_path):
  s = _prepared(tmp_path, "named", b"user,item,rating\nalice,item,5\n"
                b"user,item,4\n")
  assert sorted(s.user_ids.tolist()) == ["alice", "user"]
  with pytest.raises(InputError, match=r"ratings.csv:4: this line repeats"
                     r" the header"):
    _prepared(tmp_path, "again", b"user,item,rating\na,x,5\nb,y,4\n"
              b"user,item,rating\n")
  # A U+FEFF inside a value (scraped text) is no joined file.
  s = _prepared(tmp_path, "zwnbsp", "user,item,rating\na,x\ufeffy,5\n"
                .encode())
  assert s.item_ids.tolist() == ["x\ufeffy"]


def test_joined_files_are_refused_at_the_repeated_header_or_bom(tmp_path):
  with pytest.raises(InputError, match=r"orders.csv:4: this line repeats the"
                     r" header"):
    root = tmp_path / "joined"
    datafiles.write(str(root / "orders.csv"),
                    "customer;sku\nc1;A\nc2;B\ncustomer;sku\nc1;C\n")
    data = data_config(root, id_features=True, ratings="orders.csv",
                       delimiter=";", user_col="customer", item_col="sku",
                       rating_col="")
    data.implicit.enabled = True
    prepare.prepare(data, tmp_path / "joined-store")
  with pytest.raises(InputError, match=r"ratings.csv:3: a byte order mark"):
    _prepared(tmp_path, "bom", "user,item,rating\na,x,4\n\ufeffa,y,3\n"
              .encode())


def test_a_feature_table_joined_with_its_header_is_refused(tmp_path):
  # `cat items-a.csv items-b.csv`: the second header is no item `item`
  # whose maker is `maker` (a phantom item in the catalog, a phantom
  # category in the vocabulary).
  root = tmp_path / "joined-items"
  datafiles.write(str(root / "ratings.csv"),
                  "user,item,rating\na,x,4\nb,y,3\n")
  datafiles.write(str(root / "items.csv"),
                  "item,maker\nx,Acme\nitem,maker\ny,Pens\n")
  data = data_config(root, item_features="items.csv",
                     categorical=("maker",))
  with pytest.raises(InputError, match=r"items.csv:3: this line repeats the"
                     r" header"):
    prepare.prepare(data, tmp_path / "store")
  assert not os.path.exists(tmp_path / "store")
  # An item called like the id column, with its own features, is an item.
  datafiles.write(str(root / "items.csv"),
                  "item,maker\nx,Acme\nitem,Pens\ny,Pens\n")
  prepare.prepare(data, tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  assert s.item_ids.tolist() == ["item", "x", "y"]


def test_a_quoted_field_after_a_space_is_unquoted(tmp_path):
  # `a, "x", 4` (a space after each comma) quotes `x`: the same item as
  # the unquoted `x`, not a second item `"x"` with its quotes.
  s = _prepared(tmp_path, "one", b'user, item, rating\na, "x", 4\nb, x, 3\n')
  assert s.item_ids.tolist() == ["x"]
  s = _prepared(tmp_path, "spaced", b'user, item, rating\na, "x", 4\n'
                b'b, x, 3\nc, "y, z", 5\n')
  assert s.item_ids.tolist() == ["x", "y, z"]
  assert s.num_ratings == 3
  # A feature table too: `"A, Inc."` is one field, not two.
  root = tmp_path / "spaced"
  (root / "items.csv").write_bytes(b'item, maker\nx, "A, Inc."\ny, B\n')
  prepare.prepare(data_config(root, item_features="items.csv",
                              categorical=("maker",)),
                  tmp_path / "spaced-features")
  s = store_lib.open_store(tmp_path / "spaced-features")
  assert vocab_of(s, "maker", s.item_features["maker"][
      s.item_ids.tolist().index("x")]) == ["A, Inc."]


def test_two_roles_naming_one_column_are_refused(tmp_path):
  # `item_col=user` would make every user rate an item of its own name.
  with pytest.raises(InputError, match=r"ratings.csv:1: user and item are"
                     r" one column, 'user'"):
    _prepared(tmp_path, "same", b"user,item,rating\na,x,4\nb,y,3\n",
              item_col="user")
  with pytest.raises(InputError, match=r"ratings.csv:1: item and timestamp"
                     r" are one column, 1:"):
    _prepared(tmp_path, "positions", b"a,x,4\nb,y,3\n", header=False,
              user_col="0", item_col="1", rating_col="2", timestamp_col="1")
  assert not os.path.exists(tmp_path / "same-store")


def test_a_negative_column_position_is_refused(tmp_path):
  # `item_col=-3` of a 3-field file was the user column, counted from the
  # end: every user rated an item named like themselves, unrefused.
  with pytest.raises(InputError) as e:
    _prepared(tmp_path, "negative", b"a,x,4\nb,y,3\n", header=False,
              user_col="0", item_col="-3", rating_col="2")
  assert str(e.value) == ("data.generic.item_col='-3': without a header a"
                          " column is its 0-based position")
  assert not os.path.exists(tmp_path / "negative-store")


def test_one_huge_id_is_refused_before_it_is_held(tmp_path):
  lines = "".join(f"u{u},i{u % 7},3\n" for u in range(300))
  with pytest.raises(InputError, match=r"ratings.csv:302: user id of"
                     r" 600,000 characters"):
    _prepared(tmp_path, "long", f"user,item,rating\n{lines}{'x' * 600_000},"
              "i1,4\n".encode())
  # Characters count, not UTF-8 bytes: 1.5 MB of CJK is 500,000 of them.
  lines = "".join(f"u{u},i{u % 7},3\n" for u in range(100))
  cjk = "\u4e2d" * 500_000
  s = _prepared(tmp_path, "cjk", f"user,item,rating\n{lines}{cjk},i1,4\n"
                .encode())
  assert s.num_users == 101


def test_a_wrong_delimiter_is_hinted_at_a_field_count_and_a_feature(tmp_path):
  with pytest.raises(InputError, match=r"ratings.csv:2: 2 field\(s\) .*line 1"
                     r" is one field split on ',': is the delimiter ';'\?"
                     r" \(data\.generic\.delimiter\)$"):
    _prepared(tmp_path, "semi", b"user;item;rating\nalice;mug;4,5\n")
  root = tmp_path / "feat"
  datafiles.write(str(root / "ratings.csv"), "user;item;rating\na;mug;4\n")
  datafiles.write(str(root / "items.csv"), "item,maker\nmug,Acme\n")
  with pytest.raises(InputError, match=r"feature column 'maker' is in no"
                     r" feature table's header \(.*items.csv: item,maker;"
                     r" the header is one field split on ';': is the"
                     r" delimiter ','\? \(data.generic.feature_delimiter\)\)"):
    prepare.prepare(data_config(root, delimiter=";", item_features="items.csv",
                                categorical=("maker",)), tmp_path / "f-store")


@pytest.mark.parametrize("header", ["item,rating,note,user,when",
                                    "when,item,user,rating"])
def test_the_server_log_appends_to_a_file_of_any_column_order(tmp_path,
                                                              header):
  """The README's loop (`tail -n +2 interactions.csv >> ratings.csv`) with
  a ratings file whose columns are not `user,item,rating`: the log wrote
  those three in that order under its own header, so the appended lines
  read as ratings of the user by the item (or failed on their width)."""
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  root = tmp_path / "data"
  names = header.split(",")
  rows = [{"user": u, "item": i, "rating": r, "note": "x", "when": t}
          for u, i, r, t in [("alice", "mug", "4", "10"), ("bob", "pen", "2", "20"),
                             ("alice", "pen", "5", "30")]]
  text = header + "\n" + "".join(
      ",".join(row[n] for n in names) + "\n" for row in rows)
  datafiles.write(str(root / "ratings.csv"), text)
  prepare.prepare(data_config(root, timestamp_col="when", id_features=True),
                  tmp_path / "store")
  fmt = ratings_io.store_format(store_lib.open_store(tmp_path / "store"))
  assert fmt.columns == tuple(names)
  log = interaction_log.InteractionLog(str(tmp_path / "log"), fmt,
                                       clock=parsing.FileClock("seconds"))
  log.append(["bob", "carol"], ["mug", "ink"], [3.0, 1.0])
  assert log.read().users.tolist() == ["bob", "carol"]  # a restart replays
  log.close()
  with open(log.path) as f:
    assert f.readline().strip() == header
    appended = f.read()
  joined = tmp_path / "joined.csv"
  joined.write_text(text + appended)
  r = ratings_io.parse_ratings(joined, fmt)
  assert r.users.tolist() == ["alice", "bob", "alice", "bob", "carol"]
  assert r.items.tolist() == ["mug", "pen", "pen", "mug", "ink"]
  assert r.ratings.tolist() == [4.0, 2.0, 5.0, 3.0, 1.0]
  assert (r.timestamps[3:] > 30).all()  # the log's times read as later


@pytest.mark.parametrize("column", ["kind/sub", "../ratings", "q" * 251])
def test_a_feature_column_named_like_a_path_is_refused_at_its_header(
    shop, tmp_path, column):
  """A feature's name is its file name in the store: `kind/sub` and a
  name of 251 bytes failed to write (exit 1) and `../ratings` replaced an
  earlier store at `--out` with one whose ratings.npy was the feature's
  indices."""
  out = tmp_path / "store"
  prepare.prepare(data_config(shop), out)  # an earlier, good store
  before = {f: (out / f).read_bytes() for f in ("ratings.npy", "manifest.json")}
  datafiles.write(str(shop / "items.csv"), f"item,{column}\nmug,a\npen,b\n")
  with pytest.raises(InputError) as e:
    prepare.prepare(data_config(shop, item_features="items.csv",
                                categorical=(column,)), out)
  assert str(e.value) == (
      f"{shop / 'items.csv'}:1: feature column {excerpt(column)}: a"
      " feature's name is a file name in the store and may hold no '/' and"
      " at most 250 bytes (rename the column)")
  assert {f: (out / f).read_bytes() for f in before} == before
  assert sorted(os.listdir(tmp_path)) == ["shop", "store"]


def test_a_feature_name_of_250_bytes_is_written(shop, tmp_path):
  column = "é" * 125  # 250 bytes in UTF-8
  datafiles.write(str(shop / "items.csv"), f"item,{column}\nmug,a\npen,b\n")
  prepare.prepare(data_config(shop, item_features="items.csv",
                              categorical=(column,)), tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  mug = s.item_ids.tolist().index("mug")
  assert vocab_of(s, column, s.item_features[column][mug]) == ["a"]


def test_a_header_read_as_a_line_of_integer_ids_is_refused(tmp_path):
  # With header=false and no rating column, `user,item` became a user
  # `user` who clicked an item `item`, and every id a string.
  def clicks(name, text):
    datafiles.write(str(tmp_path / name / "ratings.csv"), text)
    data = data_config(tmp_path / name, id_features=True, header=False,
                       user_col="0", item_col="1", rating_col="")
    data.implicit.enabled = True
    prepare.prepare(data, tmp_path / f"{name}-store")
    return store_lib.open_store(tmp_path / f"{name}-store")

  with pytest.raises(InputError) as e:
    clicks("clicks", "user,item\n1,10\n2,20\n")
  assert str(e.value) == (
      f"{tmp_path / 'clicks' / 'ratings.csv'}:1: this line ('user', 'item')"
      " looks like a header: every other line's ids are integers"
      " (data.generic.header=true reads it as one)")
  assert not os.path.exists(tmp_path / "clicks-store")
  s = clicks("guest", "guest,10\n2,20\n")  # an item id is an integer
  assert s.user_ids.tolist() == ["2", "guest"]


def test_a_feature_column_that_is_the_id_column_says_so(shop, tmp_path):
  # Was "'item' is in no feature table's header (items.csv: item, ...)".
  with pytest.raises(InputError) as e:
    prepare.prepare(data_config(shop, item_features="items.csv",
                                categorical=("item",)), tmp_path / "s")
  assert str(e.value) == (
      f"{shop / 'items.csv'}:1: data.generic: feature column 'item' is the id"
      " column of items.csv; for ids as features set"
      " data.generic.id_features=true")


def test_a_work_directory_store_of_other_generic_settings_is_refused(
    shop, tmp_path):
  # A resume that named a feature table logged "resuming with a changed
  # config: data.generic.item_features '' -> 'items.csv'" and trained on
  # the old store, without it.
  data = data_config(shop)
  prepare.ensure_store(data, tmp_path / "work")
  prepare.ensure_store(data, tmp_path / "work")  # the same settings: kept
  changed = data_config(shop, item_features="items.csv",
                        categorical=("maker",))
  with pytest.raises(InputError) as e:
    prepare.ensure_store(changed, tmp_path / "work")
  assert str(e.value) == (
      f"{tmp_path / 'work' / 'store'}: the generic store was built with other"
      " data.generic settings (item_features: '' there, 'items.csv' now,"
      " categorical: [] there, ['maker'] now); use another work directory,"
      " or prepare a store and name it in data.store")
  changed.store = str(tmp_path / "work" / "store")  # a prepared store
  assert prepare.ensure_store(changed, tmp_path / "other").num_items == 3


def test_a_work_directory_store_of_another_list_pad_is_refused(shop,
                                                               tmp_path):
  # A resume with another data.list_pad.tags logged "resuming with a
  # changed config: data.list_pad.tags 2 -> 4" and trained on the store's
  # tags, still cut to 2.
  keys = dict(item_features="items.csv", lists=("tags",))
  data = data_config(shop, **keys)
  data.list_pad.tags = 2
  assert prepare.ensure_store(data, tmp_path / "work").item_features[
      "tags"].shape[1] == 2
  data.list_pad.genre = 9  # no list column of this data: no matter
  prepare.ensure_store(data, tmp_path / "work")
  data.list_pad.tags = 4
  with pytest.raises(InputError) as e:
    prepare.ensure_store(data, tmp_path / "work")
  assert str(e.value) == (
      f"{tmp_path / 'work' / 'store'}: the store was built with another"
      " data.list_pad (tags: 2 there, 4 now); use another work directory,"
      " or prepare a store and name it in data.store")
  del data.list_pad["tags"]  # the longest list, 4: still another setting
  with pytest.raises(InputError, match=r"\(tags: 2 there, None now\)"):
    prepare.ensure_store(data, tmp_path / "work")


def test_numeric_columns_become_their_quantile_bins(tmp_path):
  """A price as a category of its own tells a new item nothing; its bin
  is shared with trained items of similar prices. Missing values are 0,
  the bins' names say their bounds, and the store records the keys (a
  resume with other bins is another store)."""
  root = tmp_path / "priced"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n" + "".join(
      f"u{u},i{i},{1 + (u + i) % 5}\n" for u in range(4) for i in range(8)))
  datafiles.write(str(root / "items.csv"), "item,price,year\n" + "".join(
      f"i{i},{p},{2000 + i % 2}\n" for i, p in enumerate(
          ["1.5", "2", "", "40", "300.25", "7", "n/a", "9e1"])))
  data = data_config(root, item_features="items.csv",
                     numeric=("price", "year"), numeric_bins=2,
                     missing=("", "n/a"))
  prepare.prepare(data, tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  price = {f.name: f for f in s.features}["price"]
  assert price.kind == "categorical" and price.vocab == 3
  # The median of the six known prices, 23.5, splits them in two.
  assert s.vocab("price") == ["<missing>", "<23.5", ">=23.5"]
  assert s.item_features["price"].tolist() == [1, 1, 0, 2, 2, 1, 0, 2]
  # Two values, 2000 and 2001, split at their median, 2000.5.
  assert s.item_features["year"].tolist() == [1, 2] * 4
  assert s.manifest["source"]["generic"]["numeric"] == ["price", "year"]
  assert s.manifest["source"]["generic"]["numeric_bins"] == 2
  # `metarec data inspect` names the bins.
  summary = describe.summary(s)
  assert [f.get("bins") for f in summary["features"]] == [
      ["<23.5", ">=23.5"], ["<2000.5", ">=2000.5"]]
  assert "price          categorical vocab 3, the quantile bins of" \
      " numbers: <23.5 ... >=23.5" in describe.format_summary(summary)


def test_numeric_column_errors_name_the_line_and_the_fix(tmp_path):
  root = tmp_path / "priced"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\nu,a,3\n")
  datafiles.write(str(root / "items.csv"), 'item,price\na,1\nb,"7,5"\nc,-\n')
  data = data_config(root, item_features="items.csv", numeric=("price",))
  with pytest.raises(InputError, match=r"items.csv:3: numeric feature column"
                     r" 'price': value '7,5' is not a finite number \(write"
                     r" decimals with a '\.'"):
    prepare.prepare(data, tmp_path / "a")
  datafiles.write(str(root / "items.csv"), "item,price\na,1\nb,7.5\nc,-\n")
  with pytest.raises(InputError, match=r"items.csv:4: .*value '-' is not a"
                     r" finite number \(if it means missing, add it to"
                     r" data.generic.missing\)"):
    prepare.prepare(data, tmp_path / "a")
  data.generic.missing = ("", "-")
  prepare.prepare(data, tmp_path / "a")
  for other in ("categorical", "lists"):
    data = data_config(root, item_features="items.csv", numeric=("price",),
                       **{other: ("price",)})
    with pytest.raises(InputError, match=r"price is in both"):
      prepare.prepare(data, tmp_path / "b")


def test_new_items_by_a_year_or_a_release_date(tmp_path):
  """A shop's item table has a release date, not a year: it was refused
  as "not an integer" for data.generic.new_item_year."""
  root = tmp_path / "dated"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\nu,a,3\n")
  released = ["2018-12-31", "2019-01-01", "2020-02-29T10:00:00Z", "", "2021",
              "2019-06-01 08:00"]
  datafiles.write(str(root / "items.csv"), "item,released\n" + "".join(
      f"{'abcdef'[i]},{r}\n" for i, r in enumerate(released)))
  data = data_config(root, item_features="items.csv", id_features=True,
                     new_item_col="released", new_item_year=2019)
  prepare.prepare(data, tmp_path / "store")
  s = store_lib.open_store(tmp_path / "store")
  assert s.item_new.tolist() == [False, True, True, False, True, True]
  datafiles.write(str(root / "items.csv"), "item,released\na,2019\n"
                  "b,spring 2019\nc,2019-13-01\nd,2019\n")
  with pytest.raises(InputError, match=r"items.csv:3: released 'spring 2019'"
                     r" is neither a year nor an ISO 8601 date .* \(and 1 more"
                     r" such line: 4\)"):
    prepare.prepare(data, tmp_path / "a")
  data.generic.new_item_year = 0
  with pytest.raises(InputError, match=r"items.csv:2: released '2019' is not"
                     r" 0 or 1 \(for a year or a date, set"
                     r" data.generic.new_item_year\) \(and 3 more"):
    prepare.prepare(data, tmp_path / "a")


def test_a_price_named_categorical_gets_a_note_naming_numeric(tmp_path):
  root = tmp_path / "priced"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\nu,i0,3\n")
  datafiles.write(str(root / "items.csv"), "item,price,zip,size\n" + "".join(
      f"i{i},{i + 0.99},{10000 + i},{'SML'[i % 3]}\n" for i in range(60)))
  data = data_config(root, item_features="items.csv",
                     categorical=("price", "zip", "size"))
  prepare.prepare(data, tmp_path / "store")
  notes = store_lib.open_store(tmp_path / "store").manifest["notes"]
  # Integers may be codes (zip): only the column of decimals is named.
  assert notes == ["feature column 'price' (item) holds 60 different"
                   " numbers: as categories, a value seen in no training"
                   " rating tells the model nothing (name it in"
                   " data.generic.numeric to read each value as its"
                   " quantile bin)"]
  data.generic.categorical = ("zip", "size")
  data.generic.numeric = ("price",)
  prepare.prepare(data, tmp_path / "store2")
  assert store_lib.open_store(tmp_path / "store2").manifest["notes"] == []


def test_a_tab_separated_dump_with_quotes_as_text_reads_with_quoting_none(
    tmp_path):
  """An Amazon-style TSV: a review title `"Best" mug ever` switched the
  whole file to CSV quoting, which refused it ("malformed quoting"), and
  no setting read it; the item table's titles likewise."""
  root = tmp_path / "tsv"
  datafiles.write(str(root / "reviews.tsv"),
                  "user\titem\trating\ttitle\n"
                  'u0\ti1\t5\t"Best" mug ever\n'
                  'u0\ti2\t4\tmeh\n'
                  'u1\ti1\t3\t"ok\n')
  datafiles.write(str(root / "items.tsv"),
                  'item\tcat\tname\ni1\tkitchen\t"Weird Al" mug\n'
                  'i2\toffice\tpen\n')
  keys = dict(ratings="reviews.tsv", delimiter="\\t",
              item_features="items.tsv", categorical=("cat",))
  with pytest.raises(InputError, match=r"reviews\.tsv:2: malformed quoting:"
                     r" .* data\.generic\.quoting=none reads a '\"' as text"):
    prepare.prepare(data_config(root, **keys), tmp_path / "auto")
  prepare.prepare(data_config(root, quoting="none", **keys),
                  tmp_path / "none")
  store = store_lib.open_store(tmp_path / "none")
  assert store.user_ids.tolist() == ["u0", "u1"]
  assert store.item_ids.tolist() == ["i1", "i2"]
  assert vocab_of(store, "cat", [1, 2]) == ["kitchen", "office"]
  # What the server logs in that format reads back with quotes as text.
  fmt = ratings_io.store_format(store)
  assert fmt.quoting == "none"
  text = ratings_io.format_ratings(np.array(['a "b']), np.array(["i1"]),
                                   np.array([4.0]), fmt)
  assert text.splitlines()[-1].startswith('a "b\ti1\t4')
