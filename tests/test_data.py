"""Synthetic data, the task store, the protocol splits and the sampler."""

import dataclasses
import os

import numpy as np
import pytest

from conftest import synthetic_store
from metarec_jax.data import splits, store as store_lib
from metarec_jax.data.convert import synthetic
from metarec_jax.data.sampler import SamplerSpec, TrainSampler
from metarec_jax.data.tasks import FeatureTables, taskset_batches

SPEC = synthetic.SyntheticSpec(num_users=700, num_items=300, min_ratings=10,
                               max_ratings=60, director_vocab=50,
                               actor_vocab=80, zip_vocab=40, chunk_users=256)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  return synthetic_store(tmp_path_factory, "data", SPEC)


@pytest.fixture(scope="module")
def split(store):
  return splits.split(store, splits.ProtocolSpec(seed=3))


def test_synthetic_store_round_trip(store, tmp_path):
  assert store.num_users == 700 and store.num_items == 300
  counts = store.counts()
  assert counts.min() >= 1 and counts.max() <= 60 and len(set(counts)) > 10
  assert store.num_ratings == counts.sum() == store.manifest["num_ratings"]
  assert set(np.unique(store.ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
  assert isinstance(store.items, np.memmap)
  for u in range(0, 700, 97):  # a user's items are distinct
    items = store.items[store.offsets[u]:store.offsets[u + 1]]
    assert len(set(items.tolist())) == len(items)
  names = {f.name for f in store.features}
  assert names == {"rate", "genre", "director", "actor", "gender", "age",
                   "occupation", "zip"}
  genre = store.item_features["genre"]
  assert genre.shape == (300, 4) and (genre[:, 0] > 0).all()
  assert store.vocab("genre")[0] == "<pad>"
  # Same seed, same data; another seed, other data.
  again = str(tmp_path / "again")
  synthetic.generate(SPEC, again)
  other = store_lib.open_store(again)
  np.testing.assert_array_equal(other.items, store.items)
  np.testing.assert_array_equal(other.ratings, store.ratings)
  reseeded = str(tmp_path / "reseeded")
  synthetic.generate(dataclasses.replace(SPEC, seed=1), reseeded)
  assert not np.array_equal(store_lib.open_store(reseeded).ratings[:500],
                            store.ratings[:500])


def test_every_user_gets_its_count_even_from_few_popular_items(tmp_path):
  """Draws by popularity from 100 items held fewer distinct items than a
  user's count: 1 of 2,000 users had 15 ratings for --min_ratings=20, and
  the whole store 24% fewer ratings than drawn."""
  spec = synthetic.SyntheticSpec(num_users=2000, num_items=100,
                                 director_vocab=50, actor_vocab=80,
                                 zip_vocab=40)
  synthetic.generate(spec, tmp_path / "s")
  store = store_lib.open_store(str(tmp_path / "s"))
  counts = store.counts()
  assert counts.min() >= 20 and counts.max() <= 100
  # Counts are drawn uniformly in [20, 100]: about 60 on average.
  assert 55 < counts.mean() < 65
  for u in range(0, 2000, 7):
    items = store.items[store.offsets[u]:store.offsets[u + 1]]
    assert len(set(items.tolist())) == len(items)
    assert set(np.unique(store.ratings[store.offsets[u]:store.offsets[u + 1]])
               ) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_store_writer_leaves_nothing_when_interrupted(tmp_path):
  out = str(tmp_path / "store")
  with pytest.raises(RuntimeError):
    with store_lib.StoreWriter(out) as w:
      w.save_array("items.npy", np.arange(3))
      raise RuntimeError("killed")
  assert os.listdir(tmp_path) == []


def test_user_split_is_exact_and_disjoint(store, split):
  g = split.user_group
  rated = int((store.counts() > 0).sum())
  assert (g == splits.NEW).sum() == round(0.2 * rated)
  existing = (g == splits.EXISTING).sum() + (g == splits.VALIDATION).sum()
  assert (g == splits.VALIDATION).sum() == round(0.1 * existing)
  # Another protocol seed gives another split.
  other = splits.split(store, splits.ProtocolSpec(seed=4))
  assert not np.array_equal(other.user_group, g)


def test_scenario_tasks_follow_the_protocol(store, split):
  g = split.user_group
  expected_group = {"W": splits.EXISTING, "UC": splits.NEW,
                    "IC": splits.EXISTING, "UIC": splits.NEW,
                    "val": splits.VALIDATION, "val_new": splits.VALIDATION}
  users_of = {}
  for name, tasks in split.scenarios.items():
    assert len(tasks) > 0, name
    sizes = np.diff(tasks.offsets)
    assert sizes.min() >= 13 and sizes.max() <= 100
    assert (g[tasks.users] == expected_group[name]).all()
    new = store.item_new[tasks.items]
    assert new.all() if name in ("IC", "UIC", "val_new") else not new.any()
    for t in range(len(tasks)):
      rows = slice(tasks.offsets[t], tasks.offsets[t + 1])
      q = tasks.is_query[rows]
      assert q.sum() == 10
      items = tasks.items[rows]
      assert not set(items[q]) & set(items[~q])  # no query item in support
      u = tasks.users[t]
      own = store.items[store.offsets[u]:store.offsets[u + 1]]
      assert set(items.tolist()) <= set(own.tolist())
    users_of[name] = set(tasks.users.tolist())
  assert not users_of["W"] & users_of["UC"]
  assert not users_of["val"] & (users_of["W"] | users_of["UC"])
  assert users_of["val_new"] <= {int(u) for u in np.flatnonzero(
      g == splits.VALIDATION)}


def test_training_never_sees_held_out_ratings(store, split):
  pos = split.train_positions
  user_of = np.repeat(np.arange(store.num_users), store.counts())
  assert not store.item_new[store.items[pos]].any()
  assert np.isin(split.user_group[user_of[pos]],
                 (splits.EXISTING, splits.VALIDATION)).all()
  for name in ("W", "val"):
    tasks = split.scenarios[name]
    task_of_row = np.repeat(np.arange(len(tasks)), np.diff(tasks.offsets))
    q_user = tasks.users[task_of_row][tasks.is_query]
    q_item = tasks.items[tasks.is_query]
    train = set(zip(user_of[pos].tolist(), store.items[pos].tolist()))
    assert not train & set(zip(q_user.tolist(), q_item.tolist()))


def sampler_for(store, split, **kw):
  spec = SamplerSpec(seed=5, tasks_per_step=8, query_size=10, max_support=16,
                     min_support=3, buckets=(8, 16))
  spec = dataclasses.replace(spec, **kw)
  tables = FeatureTables.from_store(store)
  return TrainSampler(split, tables, store.items, store.ratings, spec), spec


def test_sampler_batches_are_pure_functions_of_the_step(store, split):
  s, spec = sampler_for(store, split)
  a, b = s.batch(3), s.batch(3)
  for x, y in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y)
  # Two processes' slices make up the one-process batch.
  tables = FeatureTables.from_store(store)
  halves = [TrainSampler(split, tables, store.items, store.ratings, spec,
                         process_index=p, process_count=2).batch(3)
            for p in (0, 1)]
  for whole, h0, h1 in zip(_leaves(a), _leaves(halves[0]), _leaves(halves[1])):
    np.testing.assert_array_equal(whole, np.concatenate([h0, h1]))


def _leaves(batch):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(batch)


def test_sampler_draws_disjoint_training_ratings_padded_to_a_bucket(
    store, split):
  s, _ = sampler_for(store, split)
  assert set(s.widths) <= {8, 16}
  for step in range(6):
    b = s.batch(step)
    width = b["support"]["mask"].shape[1]
    assert width == s.width(step) and width in (8, 16)
    assert b["query"]["mask"].shape == (8, 10)
    assert b["query"]["mask"].all()
    n_support = b["support"]["mask"].sum(1)
    assert (n_support >= 3).all() and (n_support <= width).all()
    assert (b["support"]["rating"][~b["support"]["mask"]] == 0).all()


def test_an_epoch_visits_every_training_user(store, split):
  s, _ = sampler_for(store, split)
  widths, plan = s._plan(0)  # pylint: disable=protected-access
  assert set(plan.ravel().tolist()) == set(s.users.tolist())
  assert len(widths) == s.steps_per_epoch


def test_uniform_support_sizes_vary(store, split):
  s, _ = sampler_for(store, split, support_sampling="uniform")
  sizes = np.concatenate([s.batch(t)["support"]["mask"].sum(1)
                          for t in range(8)])
  assert sizes.min() >= 3 and len(set(sizes.tolist())) > 4


def test_task_set_batches_cover_every_task_once(store, split):
  tables = FeatureTables.from_store(store)
  tasks = split.scenarios["UC"]
  seen = []
  for index, batch, items in taskset_batches(tasks, tables, batch_tasks=16,
                                             buckets=(32, 64),
                                             query_width=10):
    width = batch["support"]["mask"].shape[1]
    assert width in (32, 64, 96)
    assert batch["query"]["mask"][:len(index)].sum() == 10 * len(index)
    assert not batch["support"]["mask"][len(index):].any()
    sizes = tasks.support_sizes()[index]
    np.testing.assert_array_equal(batch["support"]["mask"][:len(index)].sum(1),
                                  sizes)
    np.testing.assert_array_equal(
        tables.item["genre"][items["query"][:len(index)]],
        batch["query"]["features"]["genre"][:len(index)])
    seen.extend(index.tolist())
  assert sorted(seen) == list(range(len(tasks)))


def test_validation_size_is_the_fraction_or_enough_tasks_within_range():
  many = np.ones(5000, bool)
  assert splits.validation_size(many, 0.25) == 1250
  # Automatic: 10% already gives 200 tasks.
  assert splits.validation_size(many, 0.0) == 500
  # A small dataset: the fewest users for 200 tasks (every other user has
  # one) ...
  half = np.arange(2000) % 2 == 0
  assert splits.validation_size(half, 0.0) == 399
  # ... but never more than 30%.
  assert splits.validation_size(half[:600], 0.0) == 180


def test_an_automatic_validation_share_is_resolved_from_the_store(store):
  explicit = splits.split(store, splits.ProtocolSpec(seed=3,
                                                     val_fraction=0.1))
  auto = splits.split(store, splits.ProtocolSpec(seed=3, val_fraction=0.0))
  assert explicit.val_fraction == pytest.approx(0.1, abs=0.002)
  assert 0.1 < auto.val_fraction <= 0.3
  assert len(auto.scenarios["val"]) > len(explicit.scenarios["val"])
  # The resolved share, given explicitly, is the same split.
  again = splits.split(store, splits.ProtocolSpec(
      seed=3, val_fraction=auto.val_fraction))
  np.testing.assert_array_equal(again.user_group, auto.user_group)


@pytest.mark.parametrize("name, change, problem", [
    ("offsets.npy", lambda a: a.__setitem__(5, a[5] + 1000),
     "offsets must start at 0, never decrease and end at the"),
    ("offsets.npy", lambda a: a.__setitem__(-1, a[-1] - 1),
     "offsets must start at 0"),
    ("items.npy", lambda a: a.__setitem__(3, 300), "item indices must be 0"
     " to 299"),
    # helper D: these trained and evaluated in silence (W MAE 0.954).
    ("ratings.npy", lambda a: a.__setitem__(3, 3e9), "ratings must be finite"
     " and on the scale 1 to 5 of its manifest"),
    ("ratings.npy", lambda a: a.__setitem__(7, np.nan), "ratings must be"
     " finite"),
])
def test_a_store_whose_arrays_do_not_fit_together_is_refused(
    store, tmp_path, name, change, problem):
  """A hand-edited or damaged store opened without a word (`data inspect`
  too): JAX clamps an out-of-range index, so it only gave wrong figures."""
  import shutil  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  copy = tmp_path / "store"
  shutil.copytree(store.path, copy)
  array = np.load(copy / name)
  change(array)
  np.save(copy / name, array)
  with pytest.raises(InputError) as e:
    store_lib.open_store(copy)
  assert e.value.path == str(copy / name)
  assert problem in e.value.problem and "rebuild it with" in e.value.problem
