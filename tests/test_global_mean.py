"""The model's starting rating is the training users' mean, not one that
averages the held-out users' query ratings in (`model.global_mean`)."""

import json

import jax
import numpy as np
import pytest

from conftest import config_path, train_then_resume
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
  workdir = str(tmp_path / "run")
  with caplog.at_level("INFO", logger="metarec"):
    saved = train_then_resume(workdir, "model.global_mean", "all",
                              "training")
  assert "model.global_mean stays 'all', the run's own" in caplog.text
  assert saved.model.global_mean == "all" and saved.train.num_steps == 4
  exp = experiment.build(saved, workdir)
  assert exp.rating_mean == float(exp.store.manifest["rating_mean"])


def test_eval_and_export_refuse_to_change_the_runs_mean(tiny_metasgd_run,
                                                        tmp_path):
  """Train keeps the run's value; `eval` and `export` took an override that
  moved every new item's prediction of an anchored model."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax import eval as eval_lib
  from metarec_jax import export
  from metarec_jax.errors import InputError
  overrides = [("model.global_mean", "all")]
  with pytest.raises(InputError, match="a constant of the run's model"):
    eval_lib.evaluate_workdir(tiny_metasgd_run, overrides=overrides)
  with pytest.raises(InputError, match="a constant of the run's model"):
    export.export_workdir(tiny_metasgd_run, "unused.csv",
                          str(tmp_path / "out"), overrides=overrides)


def test_a_fresh_start_beside_an_old_config_takes_its_own_mean(tmp_path):
  """A config.json without checkpoints (a run killed in its warm-up) is
  no run to keep a constant of."""
  # pylint: disable=g-import-not-at-top
  import os
  from metarec_jax.workdir import resume
  workdir = tmp_path / "run"
  os.makedirs(workdir / "checkpoints")
  old = config_io.load_config_file(config_path("tiny"))
  old.model.global_mean = "all"
  config_io.write_workdir_config(str(workdir), old)
  config = config_io.load_config_file(config_path("tiny"))
  resume.keep_run_constants(config, str(workdir))
  assert config.model.global_mean == "training"
  os.makedirs(workdir / "checkpoints" / "3")
  resume.keep_run_constants(config, str(workdir))
  assert config.model.global_mean == "all"
  # A run written before meta.inner_lr_scale keeps its inner rate (its
  # anchored user biases were trained around it).
  path = workdir / config_io.WORKDIR_CONFIG
  record = json.loads(path.read_text())
  del record["config"]["meta"]["inner_lr_scale"]
  path.write_text(json.dumps(record))
  config = config_io.load_config_file(config_path("tiny"))
  assert config.meta.inner_lr_scale == "rating_width"
  resume.keep_run_constants(config, str(workdir))
  assert config.meta.inner_lr_scale == "none"
  # Nor the tables of a run written before model.table_row_multiple:
  # padded, its large tables' shapes refused "the same command again" (a
  # reviewer's finding).
  record = json.loads(path.read_text())
  del record["config"]["model"]["table_row_multiple"]
  path.write_text(json.dumps(record))
  config = config_io.load_config_file(config_path("tiny"))
  assert config.model.table_row_multiple == 1024
  resume.keep_run_constants(config, str(workdir))
  assert config.model.table_row_multiple == 1
