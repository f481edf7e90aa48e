"""`model.warm_min_support=validated`: the fewest support ratings that
count at all, fitted by each validation on the validation users' support
sets cut to 1 and 2 ratings (`train.min_support`), saved with the
checkpoint and reported with what it serves."""

import numpy as np

from conftest import config_path, train_then_resume
from metarec_jax import config_io
from metarec_jax.eval.evaluate import Evaluator
from metarec_jax.train import min_support, validation
from metarec_jax.train.trainer import Trainer
from metarec_jax.workdir import restore


def test_a_config_written_before_the_key_counts_every_rating():
  old = config_io.load_config_file(config_path("tiny"))
  del old.model["warm_min_support"]
  assert config_io.complete(old).model.warm_min_support == "none"
  assert config_io.complete(config_io.load_config_file(
      config_path("tiny"))).model.warm_min_support == "validated"


def test_a_validation_fits_and_reports_it(tmp_path):
  """A real validation of the tiny run's start: the minimum is one of the
  grid, held by the served params and reported; the state as trained
  holds 1; `served_values` names it."""
  config = config_io.load_config_file(config_path("tiny"))
  trainer = Trainer(config, str(tmp_path / "run"))
  evaluator = Evaluator(trainer.exp, trainer.eval_mesh)
  params = trainer.init(trainer.rng()).params
  assert float(params["model"]["warm_min_support"]) == min_support.TRAINING
  results, served, scalars = validation.validate(
      evaluator, trainer, params, 0, with_shares=True, with_map=False,
      should_stop=lambda: False)
  least = scalars["val/warm_min_support"]
  assert least in min_support.GRID
  assert float(served["model"]["warm_min_support"]) == least
  assert np.isfinite(results["val"]["mae"])
  assert restore.served_values(served)["warm_min_support"] == least
  trained = validation.as_trained(served)
  assert float(trained["model"]["warm_min_support"]) == min_support.TRAINING
  # Held at 1 (a tool measuring what the fit does): no cut is predicted.
  *_, held = validation.validate(
      evaluator, trainer, params, 0, with_shares=True, with_map=False,
      should_stop=lambda: False, min_supports=(1.0,))
  assert held["val/warm_min_support"] == 1.0


def test_a_resumed_run_keeps_its_own_parameters(tmp_path):
  """A run trained without the parameter resumes without it when the
  config given says `validated` (its checkpoints lack the leaf)."""
  workdir = str(tmp_path / "run")
  saved = train_then_resume(workdir, "model.warm_min_support", "none",
                            "validated")
  assert saved.model.warm_min_support == "none"
  assert saved.train.num_steps == 4
  _, _, state = restore.open_checkpoint(workdir)
  assert "warm_min_support" not in state.params["model"]
  assert "new_item_min_support" in state.params["model"]
