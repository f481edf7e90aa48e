"""`model.cold_share=validated`: a user without ratings is served the
meta-parameters mixed by their own validated shares, fitted by each
validation on the validation users' predictions before adaptation, and
saved, reported, exported and served as the shares are."""

import jax
import numpy as np

from conftest import config_path
from metarec_jax import config_io, experiment
from metarec_jax.eval.evaluate import Evaluator
from metarec_jax.train import shares, validation
from metarec_jax.train.trainer import Trainer


def test_a_config_written_before_the_key_serves_everyone_the_shares():
  old = config_io.load_config_file(config_path("tiny"))
  del old.model["cold_share"]
  assert config_io.complete(old).model.cold_share == "same"
  assert config_io.complete(
      config_io.load_config_file(config_path("tiny"))).model.cold_share == (
          "validated")


def test_a_meta_adapt_without_warm_adapts_it_anyway(tmp_path):
  """`warm` is bookkeeping (`Recommender.always_adapt`): a `meta.adapt`
  given without it (the user biases and the output layer, say) gets it,
  else every adapted user would be served the cold shares."""
  config = config_io.load_config_file(config_path("tiny"))
  config.meta.adapt = ("^decision/out/", "^user_bias$", "^base_bias$")
  exp = experiment.build(config, tmp_path / "run")
  assert exp.model.always_adapt == ("^warm$",)
  assert exp.meta_config.adapt == config.meta.adapt + ("^warm$",)
  config.meta.adapt = ("^decision/", "^user_bias$", "^base_bias$", "^warm$")
  assert experiment.build(config, tmp_path / "run").meta_config.adapt == (
      config.meta.adapt)
  config.model.cold_share = "same"  # no warm leaf: nothing added
  config.meta.adapt = ("^decision/out/", "^user_bias$", "^base_bias$")
  exp = experiment.build(config, tmp_path / "run2")
  assert "^warm$" not in exp.meta_config.adapt and not exp.model.always_adapt
  assert "warm" not in exp.model.init(jax.random.PRNGKey(0))


def test_the_validation_fits_the_cold_shares_on_unadapted_predictions(
    tmp_path):
  """Meta-parameters whose level is off by 2 (what adaptation resets, and
  MAML leaves where it drifts): the validation serves a user without
  ratings the item means (cold shares 0), and reports their unadapted MAE
  at that share, which is lower than at 1."""
  config = config_io.load_config_file(config_path("tiny"))
  trainer = Trainer(config, str(tmp_path / "run"))
  evaluator = Evaluator(trainer.exp, trainer.eval_mesh)
  params = trainer.init(trainer.rng()).params
  model = dict(params["model"])
  model["global_bias"] = model["global_bias"] + 2.0
  params = {**params, "model": model}
  out = validation.validate(evaluator, trainer, params, 0, with_shares=True,
                            with_map=False, should_stop=lambda: False)
  results, fitted, scalars = out
  assert scalars["val/cold_share_existing_items"] == 0.0
  np.testing.assert_array_equal(np.asarray(fitted["model"]["cold_share"]),
                                [scalars["val/cold_share_existing_items"],
                                 scalars["val/cold_share_new_items"]])
  at_one = evaluator.evaluate(
      shares.with_shares(fitted, (1.0, 1.0), (1.0, 1.0)), ("val",))
  at_fit = evaluator.evaluate(fitted, ("val",))
  assert results["val"]["mae_unadapted"] == at_fit["val"]["mae_unadapted"]
  assert (at_fit["val"]["mae_unadapted"]
          < at_one["val"]["mae_unadapted"] - 0.3)
  # The adapted users are served the shares, whatever the cold ones are.
  assert results["val"]["mae"] == at_fit["val"]["mae"]
  again = evaluator.evaluate(shares.with_shares(
      fitted, tuple(float(v) for v in np.asarray(fitted["model"]["share"])),
      (1.0, 1.0)), ("val",))
  assert again["val"]["mae"] == at_fit["val"]["mae"]
