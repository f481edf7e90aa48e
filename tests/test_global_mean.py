"""The model's starting rating is the training users' mean, not one that
averages the held-out users' query ratings in (`model.global_mean`)."""

import jax
import numpy as np
import pytest

from conftest import config_path
from metarec_jax import config_io, experiment
from metarec_jax.data.baselines import BaselineStats


def built(tmp_path, **model):
  config = config_io.load_config_file(config_path("tiny"))
  config.model.update(model)
  return experiment.build(config, str(tmp_path))


@pytest.mark.parametrize("anchor", [False, True])
def test_the_model_starts_from_the_training_mean(tmp_path, anchor):
  exp = built(tmp_path, anchor=anchor)
  train = BaselineStats.from_split(exp.store, exp.split).global_mean
  everything = float(exp.store.manifest["rating_mean"])
  assert abs(train - everything) > 1e-4  # the two differ on this data
  assert exp.rating_mean == train
  params = exp.model.init(jax.random.PRNGKey(0))
  if anchor:
    # An item without training ratings (the padding row) and a user
    # without support: the baseline's global mean, exactly.
    assert exp.model.module.global_mean == pytest.approx(train)
  else:
    bias = params["decision"]["out"]["bias"]
    np.testing.assert_allclose(np.asarray(bias), train, rtol=1e-6)


def test_runs_before_the_key_keep_the_mean_of_every_rating(tmp_path):
  exp = built(tmp_path, global_mean="all")
  assert exp.rating_mean == float(exp.store.manifest["rating_mean"])
  # A config.json written before the key existed means `all`.
  record = config_io.to_dict(exp.config)
  del record["model"]["global_mean"]
  assert config_io.complete(config_io.from_dict(record)).model.global_mean \
      == "all"


def test_a_resumed_run_keeps_its_own_global_mean(tmp_path, caplog):
  """A run trained around one starting mean keeps it when resumed with a
  config that says another (as the README's resume command, run again
  after an upgrade, would): its learned item offsets are relative to it."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import train_and_evaluate

  def config(steps, mean):
    c = config_io.load_config_file(config_path("tiny"))
    c.train.num_steps, c.train.eval_every_steps = steps, -1
    c.checkpoint.every_steps = 2
    c.model.global_mean = mean
    return c

  workdir = str(tmp_path / "run")
  train_and_evaluate(config(2, "all"), workdir)
  with caplog.at_level("INFO", logger="metarec"):
    train_and_evaluate(config(4, "training"), workdir)
  assert "model.global_mean stays 'all', the run's own" in caplog.text
  saved = config_io.read_workdir_config(workdir)
  assert saved.model.global_mean == "all" and saved.train.num_steps == 4
  exp = experiment.build(saved, workdir)
  assert exp.rating_mean == float(exp.store.manifest["rating_mean"])
