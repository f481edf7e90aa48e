"""The validated prior multiple of new items' support ratings
(`train.new_item_prior`): the fit picks the multiple with the lowest
validation MAE, reuses the evaluation at 1, and leaves a model without
new-item validation as trained."""

import jax.numpy as jnp
import numpy as np

from metarec_jax.train import new_item_prior as lib


def params(value=1.0):
  return {"model": {"new_item_prior": jnp.asarray(value, jnp.float32),
                    "w": jnp.ones(3)}}


def fake_evaluate(maes, calls):
  """Evaluates to `maes[multiple]` on `val_new`, recording each call."""
  def evaluate(p):
    m = float(p["model"]["new_item_prior"])
    calls.append(m)
    return maes[m], f"kept at {m}"
  return evaluate


def test_the_lowest_validation_mae_wins():
  maes = {1.0: 0.90, 2.0: 0.88, 4.0: 0.87, 8.0: 0.89, 16.0: 0.90}
  calls = []
  multiple, out = lib.fit(fake_evaluate(maes, calls), params(),
                          (maes[1.0], "kept at 1.0"))
  assert multiple == 4.0 and out[1] == "kept at 4.0"
  assert calls == [2.0, 4.0, 8.0, 16.0]  # 1 is not evaluated again


def test_ties_keep_the_smaller_multiple_and_no_gain_keeps_one():
  flat = {m: 0.9 for m in lib.GRID}
  assert lib.fit(fake_evaluate(flat, []), params(),
                 (0.9, None))[0] == 1.0
  worse = {1.0: 0.8, 2.0: 0.81, 4.0: 0.82, 8.0: 0.83, 16.0: 0.84}
  assert lib.fit(fake_evaluate(worse, []), params(),
                 (0.8, None))[0] == 1.0


def test_without_new_item_validation_it_stays_as_trained():
  calls = []
  for at_one in ((None, None), (float("nan"), None)):
    multiple, out = lib.fit(fake_evaluate({}, calls), params(), at_one)
    assert multiple == lib.TRAINING and out is at_one
  assert not calls


def test_a_stopped_evaluation_stops_the_fit():
  assert lib.fit(lambda p: None, params(),
                 (0.9, None)) is None


def test_with_multiple_keeps_everything_else():
  p = params()
  out = lib.with_multiple(p, 8.0)
  assert float(out["model"]["new_item_prior"]) == 8.0
  assert out["model"]["w"] is p["model"]["w"]
  assert float(p["model"]["new_item_prior"]) == 1.0  # not in place
  assert out["model"]["new_item_prior"].sharding == (
      p["model"]["new_item_prior"].sharding)
  assert lib.present(p) and not lib.present({"model": {"w": 1}})
  np.testing.assert_array_equal(out["model"]["w"], np.ones(3))


class _Pred:  # what the map's fit reads of `eval.evaluate.Predictions`
  def __init__(self, adapted, true):
    self.adapted, self.true = adapted, true
    self.mask = np.ones(true.shape, bool)


class _Evaluator:
  """Validation predictions of new items that depend on the multiple: at
  1 off by uniform noise in +-0.8 (raw MAE about 0.4; the ratings' ranges
  overlap, so no monotone map undoes it), at 4 all 0.45 too high (raw MAE
  0.45, which a monotone map undoes); every other multiple worse."""
  lo, hi = 1.0, 5.0

  def __init__(self):
    rng = np.random.default_rng(0)
    self.true = rng.integers(1, 6, (200, 10)).astype(np.float32)
    self.noise = rng.uniform(-1.0, 1.0, self.true.shape)

  def evaluate(self, params, scenarios, should_stop=None, keep=None):
    m = float(params["model"]["new_item_prior"])
    offset = {1.0: 0.8 * self.noise, 4.0: 0.45}.get(m, 1.2 * self.noise)
    p = _Pred(np.float32(self.true + offset), self.true)
    keep[scenarios[0]] = p
    return {scenarios[0]: {"mae": float(np.abs(p.adapted - p.true).mean())}}


def test_the_multiple_is_chosen_by_the_mae_as_served():
  """With a median map the multiple whose predictions the map (fitted on
  the predictions at 1) serves best wins (4), not the one with the lowest
  raw MAE (1); without a map, the raw MAE decides."""
  from metarec_jax.models import calibration  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import validation  # pylint: disable=g-import-not-at-top

  class Trainer:
    def eval_params(self, params):
      return params

  ev = _Evaluator()
  existing = _Pred(ev.true + np.float32(0.45), ev.true)  # `val`: as at 4
  start = {"model": {**params()["model"],
                     **calibration.identity(np.ones(3, bool))}}
  kept = {"val": existing}
  results = ev.evaluate(start, ("val_new",), keep=kept)
  for with_map, expected in ((True, 4.0), (False, 1.0)):
    out = validation._fit_new_item_prior(  # pylint: disable=protected-access
        ev, Trainer(), start, dict(results), dict(kept), with_map,
        lambda: False)
    served, _, scored, multiple = out
    assert multiple == expected
    assert float(served["model"]["new_item_prior"]) == expected
    assert np.allclose(scored["val_new"].adapted - ev.true,
                       0.45 if expected == 4.0 else 0.8 * ev.noise,
                       atol=1e-6)


def test_as_trained_undoes_what_a_validation_fitted():
  """A resumed run trains with (and a validation of a saved checkpoint
  starts from) the shares at 1, the multiple at 1 and the identity map,
  whatever the checkpoint served."""
  from metarec_jax.models import calibration  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import median_map, shares, validation  # pylint: disable=g-import-not-at-top
  served = {"model": {**params(8.0)["model"],
                      "share": jnp.asarray([0.25, 0.0]),
                      **calibration.identity(np.ones(3, bool))}}
  served = median_map.with_map(served, median_map.knots(1, 5),
                               [np.full(median_map.KNOTS, 0.3, np.float32),
                                None])
  trained = validation.as_trained(served)
  np.testing.assert_array_equal(trained["model"]["share"], shares.TRAINING)
  assert float(trained["model"]["new_item_prior"]) == lib.TRAINING
  assert not np.asarray(trained["model"]["median_offsets"]).any()
  np.testing.assert_array_equal(trained["model"]["w"], np.ones(3))
  # A model without them passes through.
  plain = {"model": {"w": jnp.ones(3)}}
  assert validation.as_trained(plain)["model"]["w"] is plain["model"]["w"]
