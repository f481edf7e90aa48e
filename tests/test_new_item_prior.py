"""The validated prior multiple of new items' support ratings
(`train.new_item_prior`): the fit picks the multiple with the lowest
validation MAE, reuses the evaluation at 1, and leaves a model without
new-item validation as trained; and the validated fewest of them that
count, from the cuts of the validation users' support sets."""

import jax.numpy as jnp
import numpy as np
import pytest

from metarec_jax.train import min_support as min_lib
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
  starts from) the shares at 1, the multiple and the minima at 1 and the
  identity map, whatever the checkpoint served."""
  from metarec_jax.models import calibration  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import median_map, shares, validation  # pylint: disable=g-import-not-at-top
  served = {"model": {**params(8.0)["model"],
                      "new_item_min_support": jnp.asarray(4.0),
                      "warm_min_support": jnp.asarray(3.0),
                      "share": jnp.asarray([0.25, 0.0]),
                      **calibration.identity(np.ones(3, bool))}}
  served = median_map.with_map(served, median_map.knots(1, 5),
                               [np.full(median_map.KNOTS, 0.3, np.float32),
                                None])
  trained = validation.as_trained(served)
  np.testing.assert_array_equal(trained["model"]["share"], shares.TRAINING)
  assert float(trained["model"]["new_item_prior"]) == lib.TRAINING
  assert float(trained["model"]["new_item_min_support"]) == lib.TRAINING
  assert float(trained["model"]["warm_min_support"]) == min_lib.TRAINING
  assert not np.asarray(trained["model"]["median_offsets"]).any()
  np.testing.assert_array_equal(trained["model"]["w"], np.ones(3))
  # A model without them passes through.
  plain = {"model": {"w": jnp.ones(3)}}
  assert validation.as_trained(plain)["model"]["w"] is plain["model"]["w"]


def test_the_minimum_is_the_smallest_from_which_every_cut_helps():
  assert min_lib.fit({}) == 1.0  # no new-item validation
  assert min_lib.fit({1: True, 2: True}) == 1.0
  assert min_lib.fit({1: False, 2: True}) == 2.0
  assert min_lib.fit({1: True, 2: False}) == 3.0
  assert min_lib.fit({1: False, 2: False}) == 3.0
  assert min_lib.fit({2: True}) == 1.0  # no task at 1
  assert min_lib.fit({1: False}, grid=(1.0,)) == 1.0  # the last


def _cut(adapted_errors, unadapted_error=0.5):
  """A cut's predictions: per task one query rating of 3 stars, adapted
  off by `adapted_errors`, unadapted by `unadapted_error`."""
  true = np.full((len(adapted_errors), 1), 3.0, np.float32)
  return type("P", (), {
      "adapted": true + np.float32(adapted_errors)[:, None],
      "unadapted": true + np.float32(unadapted_error), "true": true,
      "mask": np.ones(true.shape, bool)})


def test_a_size_helps_on_average_over_its_cuts():
  """Two cuts of 60 tasks, one better adapted by 0.1 and one worse by
  0.05: the size helps; worse by 0.15, it does not. With fewer than 50
  tasks it must help by the evidence: the same mean gain from errors
  that differ between tasks does not (by the warm minimum's rule it counts
  unless it is worse by the evidence)."""
  many = 60
  assert min_lib.cut_helps([_cut(np.full(many, 0.4)),
                           _cut(np.full(many, 0.55))])
  assert not min_lib.cut_helps([_cut(np.full(many, 0.4)),
                               _cut(np.full(many, 0.65))])
  few = 40
  assert min_lib.cut_helps([_cut(np.full(few, 0.4)),
                           _cut(np.full(few, 0.55))])
  spread = np.where(np.arange(few) % 2, 0.95, 0.03)  # 0.49 on average
  assert not min_lib.cut_helps([_cut(spread)] * 2)
  assert min_lib.cut_helps(
      [_cut(np.where(np.arange(many) % 2, 0.95, 0.03))] * 2)
  # The warm minimum's rule with fewer tasks: counted unless evidently
  # worse (a mean gain or loss within the noise counts; 0.6 for 0.5 does
  # not).
  assert min_lib.cut_helps([_cut(spread)] * 2, unsure_counts=True)
  worse = np.where(np.arange(few) % 2, 0.99, 0.05)  # 0.52 on average
  assert not min_lib.cut_helps([_cut(worse)] * 2)
  assert min_lib.cut_helps([_cut(worse)] * 2, unsure_counts=True)
  assert not min_lib.cut_helps([_cut(np.full(few, 0.6))] * 2,
                               unsure_counts=True)


class _CutEvaluator:
  """A minimum's validation scenario (`val_new`, the validation users' new
  items, or `val` for the warm minimum): `n` tasks of `s` (6) support and
  3 query ratings. Adapted from fewer than `bad_below` support ratings a
  task predicts 1 star too high where the unadapted prediction is exact
  up to 0.5; from more, the adapted prediction is exact and the
  unadapted 0.5 off (`noisy`: from fewer than 4 ratings, 0.95 and 0.03
  off in turn, lower on average than the unadapted by less than the
  evidence asks); a task with fewer support ratings than the model's minimum is
  predicted unadapted (as `Anchor.support_weights` does)."""

  def __init__(self, bad_below, noisy=False, n=40,
               minimum=min_lib.MINIMA[0], s=6):
    from metarec_jax.data.splits import TaskSet  # pylint: disable=g-import-not-at-top
    q = 3
    self.bad_below, self.noisy, self.minimum = bad_below, noisy, minimum
    offsets = np.arange(n + 1) * (s + q)
    is_query = np.tile(np.r_[np.zeros(s, bool), np.ones(q, bool)], n)
    self.tasks = TaskSet(users=np.arange(n), offsets=offsets,
                         items=np.tile(np.arange(1, s + q + 1), n),
                         ratings=np.full(n * (s + q), 3.0, np.float32),
                         is_query=is_query)
    self.exp = type("Exp", (), {})()
    self.exp.split = type("Split", (),
                          {"scenarios": {minimum.scenario: self.tasks}})
    self.exp.config = type("C", (), {"eval": type("E", (), {"seed": 0})})
    self.sizes = []

  def predictions(self, params, tasks, should_stop=None):
    k = int(tasks.support_sizes().max())
    self.sizes.append(k)
    true = np.full((len(tasks), 3), 3.0, np.float32)
    unadapted = true + 0.5
    least = float(params["model"][self.minimum.leaf])
    adapted = (unadapted if k < least else
               true + (1.0 if k < self.bad_below else 0.0))
    if self.noisy and least <= k < 4:
      # Errors 0.95 and 0.03 in turn: 0.49 against 0.5 on average.
      adapted = true + np.where(np.arange(len(tasks)) % 2, 0.95,
                                0.03)[:, None].astype(np.float32)
    return type("P", (), {"adapted": adapted, "unadapted": unadapted,
                          "true": true, "mask": np.ones(true.shape, bool)})

  def evaluate(self, params, scenarios, should_stop=None, keep=None):
    p = self.predictions(params, self.tasks)
    return {self.minimum.scenario: {
        "mae": float(np.abs(p.adapted - p.true).mean())}}


@pytest.mark.parametrize("minimum", min_lib.MINIMA,
                         ids=lambda m: m.leaf)
def test_the_minimum_is_fitted_on_cuts_of_its_scenarios_support_sets(
    minimum):
  """The minimum's scenario's support sets (`val_new` for new items,
  `val` for the warm minimum) cut to 1 and 2 ratings, predicted with the
  minimum at 1: where adapting is worse below 3 ratings, the minimum is 3
  (the smallest of the grid above every such cut), and likewise, on
  fewer than 50 tasks, where it is lower on average but not by the
  evidence the shares ask for (with more tasks the lower MAE decides);
  the validation's figure of that scenario is that of the model served
  with it (evaluated again only where a support set is below it), the
  other scenario's is kept."""
  from metarec_jax.train import validation  # pylint: disable=g-import-not-at-top

  class Trainer:
    def eval_params(self, params):
      return params

  start = {"model": {minimum.leaf: jnp.asarray(1.0), "w": jnp.ones(3)}}
  name = minimum.scenario
  other = "val" if name == "val_new" else "val_new"
  for bad_below, noisy, n, expected in (
      (3, False, 40, 3.0), (1, False, 40, 1.0), (2, False, 40, 2.0),
      # Noisy and fewer than 50 tasks: counted only where that is the
      # minimum's rule (the warm one: unless evidently worse).
      (1, True, 40, 1.0 if minimum.unsure_counts else 3.0),
      (5, False, 40, 3.0),
      # With 50 tasks or more the lower MAE decides, evident or not.
      (1, True, 60, 1.0), (3, False, 60, 3.0)):
    ev = _CutEvaluator(bad_below, noisy, n, minimum)
    results = {other: {"mae": 0.1}, name: {"mae": 9.0}}
    params, results, least = validation._fit_min_support(  # pylint: disable=protected-access
        ev, Trainer(), start, results, lambda: False, minimum=minimum)
    assert least == expected, (bad_below, least)
    cuts = min_lib.CUTS
    assert ev.sizes[:2 * cuts] == [1] * cuts + [2] * cuts
    assert float(params["model"][minimum.leaf]) == expected
    assert results[other] == {"mae": 0.1}
    # Every support set holds 6 ratings, at or above any minimum: the
    # scenario's figure cannot change and is kept (not evaluated again).
    assert results[name]["mae"] == 9.0
  # Support sets of 2 ratings, worse adapted below 3: the minimum 3 serves
  # them unadapted, and the figure is evaluated again (0.5 off).
  ev = _CutEvaluator(3, minimum=minimum, s=2)
  results = {other: {"mae": 0.1}, name: {"mae": 9.0}}
  _, results, least = validation._fit_min_support(  # pylint: disable=protected-access
      ev, Trainer(), start, results, lambda: False, minimum=minimum)
  assert least == 3.0 and results[name]["mae"] == 0.5
  assert results[other] == {"mae": 0.1}
  stopped = _CutEvaluator(3, minimum=minimum)
  stopped.predictions = lambda *a, **k: None
  assert validation._fit_min_support(  # pylint: disable=protected-access
      stopped, Trainer(), start, {}, lambda: True, minimum=minimum) is None
