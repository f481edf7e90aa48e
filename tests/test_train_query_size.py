"""`data.train_query_size`: training tasks draw their own number of query
ratings; the evaluation protocol keeps `data.query_size`."""

import numpy as np
import pytest

from conftest import config_path
from metarec_jax import config_io, experiment
from metarec_jax.data.sampler import TrainSampler
from metarec_jax.errors import InputError


def sampler(tmp_path, **data):
  config = config_io.load_config_file(config_path("tiny"))
  config.data.update(data)
  exp = experiment.build(config, str(tmp_path))
  return exp, TrainSampler(exp.split, exp.tables, exp.store.items,
                           exp.store.ratings, exp.sampler_spec())


def test_training_tasks_draw_their_own_query_size(tmp_path):
  exp, plain = sampler(tmp_path / "plain")
  wide_exp, wide = sampler(tmp_path / "wide", train_query_size=15)
  assert plain.spec.query_size == 10 and wide.spec.query_size == 15
  counts = exp.split.train_counts()
  for s, q in ((plain, 10), (wide, 15)):
    # Only users with the query ratings and data.min_support train.
    np.testing.assert_array_equal(
        s.users, np.flatnonzero(counts >= q + exp.config.data.min_support))
    for step in range(3):
      batch = s.batch(step)
      assert batch["query"]["mask"].shape[1] == q
      assert batch["query"]["mask"].all()
      # The support holds the rest of each user's ratings, up to its cap.
      users = s._plan(0)[1][step]  # pylint: disable=protected-access
      np.testing.assert_array_equal(
          batch["support"]["mask"].sum(1),
          np.minimum(counts[users] - q, exp.config.data.max_support))
  # The protocol is the same: the same held-out ratings and evaluation
  # tasks, each with data.query_size (10) query ratings.
  np.testing.assert_array_equal(exp.split.train_positions,
                                wide_exp.split.train_positions)
  for name, tasks in exp.split.scenarios.items():
    other = wide_exp.split.scenarios[name]
    np.testing.assert_array_equal(tasks.items, other.items)
    np.testing.assert_array_equal(tasks.is_query, other.is_query)
    sizes = np.diff(tasks.offsets) - tasks.support_sizes()
    assert (sizes == 10).all()


def test_too_few_ratings_for_the_training_query_size_names_its_key(tmp_path):
  with pytest.raises(InputError, match=r"no training user has the 503"
                     r" training ratings a task needs \(500 query ratings,"
                     r" data.train_query_size"):
    sampler(tmp_path, train_query_size=500)
