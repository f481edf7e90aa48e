"""`model.id_init=svd`: the item ids' table starts at the training ratings'
item factors (`data.factors`)."""

import jax
import numpy as np
import pytest

import datafiles
from conftest import config_path, train_then_resume
from metarec_jax import config_io, experiment
from metarec_jax.data import factors

def build(root, workdir, **model):
  config = config_io.load_config_file(config_path("tiny"))
  config.data.name, config.data.root = "generic", str(root)
  config.model.update(model)
  return experiment.build(config, workdir)


def item_rows(exp):
  """Item index -> its row in the `item_key` table of fresh parameters."""
  table = np.asarray(exp.model.init(jax.random.PRNGKey(0))
                     ["embed"]["item_key"]["embedding"])
  return table, np.asarray(exp.tables.item["item_key"]).reshape(-1)


def test_the_factors_span_the_ratings_taste_and_are_shrunk_and_repeatable(
    tmp_path):
  truth = datafiles.taste_ratings(tmp_path / "data", unrated=(7,))
  exp = build(tmp_path / "data", tmp_path / "run")
  got = factors.item_factors(exp.store, exp.split, 8)
  assert got.dtype == np.float32 and got.shape == (exp.store.num_items, 8)
  ids = exp.store.item_ids
  order = np.array([int(str(i)[1:]) for i in ids])  # item index -> i<n>
  # The taste is nearly linear in the rows: a least-squares map from the
  # rows to the true factors explains most of them; from random rows,
  # about 8 of 79 dimensions' worth.
  rated = order != 7
  y = truth[order[rated]]

  def explained(x):
    fit = x @ np.linalg.lstsq(x, y, rcond=None)[0]
    return 1 - ((y - fit) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
  assert explained(got[rated]) > 0.75
  assert explained(np.random.default_rng(0).normal(size=(79, 8))) < 0.25
  # Never longer than a row of N(0, 1) entries; the unrated item: zeros.
  assert np.linalg.norm(got, axis=1).max() <= np.sqrt(8) + 1e-5
  assert not got[~rated].any()
  # Seeded: the same rows on every call (each process of a joined run).
  np.testing.assert_array_equal(got, factors.item_factors(
      exp.store, exp.split, 8))
  # A scale sets the length, as model.embed_std sets the random rows'.
  np.testing.assert_allclose(factors.item_factors(
      exp.store, exp.split, 8, scale=0.5), 0.5 * got, rtol=1e-5, atol=1e-7)


def test_the_item_key_table_starts_at_the_factors_by_default(tmp_path):
  # Ids that are no canonical numbers ("00") stay strings, which the
  # feature's vocabulary orders otherwise than the store's items: an item's
  # row is not its index + 1.
  datafiles.taste_ratings(tmp_path / "data",
                          item_name=lambda i: "00" if i == 0 else str(i))
  exp = build(tmp_path / "data", tmp_path / "run")
  table, index = item_rows(exp)
  assert (index != np.arange(1, len(index) + 1)).any()
  dim = exp.config.model.embed_dim
  want = factors.item_factors(exp.store, exp.split, dim)
  np.testing.assert_array_equal(table[index], want)
  assert not table[0].any()  # the row of ids without training ratings
  # `normal`: at random, as before the key (a config without it).
  random_table, _ = item_rows(build(tmp_path / "data", tmp_path / "run2",
                                    id_init="normal"))
  assert abs(random_table[1:].std() - 1.0) < 0.1
  assert np.abs(random_table[index] - want).max() > 1.0


def test_a_config_written_before_the_key_starts_at_random():
  old = config_io.load_config_file(config_path("tiny"))
  del old.model["id_init"]
  assert config_io.complete(old).model.id_init == "normal"


def test_implicit_feedback_keeps_random_rows(tmp_path):
  datafiles.taste_ratings(tmp_path / "data")
  config = config_io.load_config_file(config_path("tiny"))
  config.data.name, config.data.root = "generic", str(tmp_path / "data")
  config.data.implicit.update(enabled=True, threshold=3.5)
  exp = experiment.build(config, tmp_path / "run")
  table = np.asarray(exp.model.init(jax.random.PRNGKey(0))
                     ["embed"]["item_key"]["embedding"])
  assert abs(table[1:].std() - 1.0) < 0.1


@pytest.mark.parametrize("embed_dim", [4, 40])
def test_the_rows_fit_any_width_and_a_padded_table(tmp_path, embed_dim):
  """Wider than the data's rank (30 users, of them about 24 training
  users: one less than those): the columns past it are zeros; a table
  padded to `model.table_row_multiple` (141 rows to 142) keeps zeros past
  the items."""
  datafiles.taste_ratings(tmp_path / "data", users=30, items=140,
                          per_user=(30, 50))
  exp = build(tmp_path / "data", tmp_path / "run", embed_dim=embed_dim,
              table_row_multiple=2)
  table, index = item_rows(exp)
  assert table.shape == (142, embed_dim)
  assert np.isfinite(table).all() and not table[141:].any()
  rank = min(embed_dim, (exp.split.train_counts() > 0).sum() - 1)
  assert not table[:, rank:].any()
  assert (np.abs(table[:, rank - 1]) > 1e-3).any()


@pytest.mark.parametrize("rating", ["4", "3.3"])
def test_ratings_all_equal_start_the_table_at_random(tmp_path, rating):
  """No residual to factor (every rating the same): random rows, where the
  SVD stopped `train` with an ArpackError (helper R)."""
  datafiles.write(str(tmp_path / "data" / "ratings.csv"),
                  "user,item,rating\n" + "".join(
                      f"u{u},i{i},{rating}\n" for u in range(60)
                      for i in range(30)))
  exp = build(tmp_path / "data", tmp_path / "run")
  assert factors.item_factors(exp.store, exp.split, 8) is None
  table, _ = item_rows(exp)
  assert abs(table[1:].std() - 1.0) < 0.2


def test_a_short_run_on_a_ratings_file_alone_learns_taste_from_the_factors(
    tmp_path):
  """400 users, 200 items of about 90 training ratings each, ratings mostly
  taste: in 100 meta-steps the learned part, started from the factors,
  beats the baseline by far on the validation users, where from random
  rows it stays at the baseline (0.514 against 0.644 and 0.655 when
  written)."""
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  datafiles.taste_ratings(tmp_path / "data", users=400, items=200)
  val = {}
  for init in ("normal", "svd"):
    config = config_io.load_config_file(config_path("tiny"))
    config.data.name, config.data.root = "generic", str(tmp_path / "data")
    config.model.id_init = init
    config.train.update(num_steps=100, eval_every_steps=100,
                        tasks_per_step=32)
    config.checkpoint.every_steps = 100
    val[init] = train_and_evaluate(config, str(tmp_path / init))["val"]
  baseline = val["svd"]["baselines"]["item_mean_user_bias"]["mae"]
  assert val["svd"]["mae"] < 0.9 * baseline
  assert val["svd"]["mae"] < val["normal"]["mae"] - 0.05


def test_a_resumed_run_keeps_the_record_of_where_its_table_started(
    tmp_path, caplog):
  """A run started at random rows (as every run before the key), resumed
  with the default config, still records `normal`: its table never was
  the factors (helper R: config.json said `svd`)."""
  datafiles.taste_ratings(tmp_path / "data", users=60, items=30)
  with caplog.at_level("INFO", logger="metarec"):
    saved = train_then_resume(str(tmp_path / "run"), "model.id_init",
                              "normal", "svd", data=tmp_path / "data")
  assert "model.id_init stays 'normal', the run's own" in caplog.text
  assert saved.model.id_init == "normal"
