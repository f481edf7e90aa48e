"""Validated shares (`train.shares`): fitted per kind of item on its own
validation scenario, above 0 only with evidence, placed like the parameter
they replace."""

import jax
import numpy as np

from metarec_jax.eval import metrics
from metarec_jax.train import shares

TASKS = 400


def params(values=(1.0, 1.0), cold=None):
  model = {"share": jax.numpy.asarray(values, jax.numpy.float32),
           "gate": jax.numpy.float32(0.5)}
  if cold is not None:
    model["cold_share"] = jax.numpy.asarray(cold, jax.numpy.float32)
  return {"model": model, "inner": None}


def fake_evaluate(best_existing, best_new, calls=None, noise=0.05,
                  gain=0.05, cold=(0.0, 0.0)):
  """Per-task errors: share 0 is the baseline, the gain grows to the
  scenario's best value (None: no tasks), plus the same per-task noise for
  every value (paired, as the same tasks are). Before adaptation the same
  with the best values `cold`, scored at the cold shares where the params
  have them (else at the shares, as the model serves)."""
  rng = np.random.default_rng(0)
  base = {"val": 0.7 + noise * rng.standard_normal(TASKS),
          "val_new": 0.9 + noise * rng.standard_normal(TASKS)}
  # Each value's own small per-task differences.
  jitter = 0.01 * rng.standard_normal((len(shares.GRID), TASKS))

  def errors(name, value, best):
    return (base[name] - gain * (1 - abs(value - best)) * (value > 0)
            + jitter[shares.GRID.index(value)])

  def evaluate(meta_params):
    model = meta_params["model"]
    value = np.asarray(model["share"])
    before = np.asarray(model.get("cold_share", model["share"]))
    assert value[0] == value[1]  # the grid moves both together
    np.testing.assert_array_equal(before, value)  # and the cold ones
    if calls is not None:
      calls.append(float(value[0]))
    results, errs, unadapted = {}, {}, {}
    for name, best, cold_best in (("val", best_existing, cold[0]),
                                  ("val_new", best_new, cold[1])):
      if best is None:
        results[name] = {"mae": None, "mae_unadapted": None}
        errs[name] = unadapted[name] = np.zeros(0)
        continue
      errs[name] = errors(name, float(value[0]), best)
      # Worse the further from the best cold value (0 can win here).
      unadapted[name] = (0.2 + base[name] + gain * abs(before[0] - cold_best)
                         + jitter[shares.GRID.index(float(before[0]))])
      results[name] = {"mae": float(errs[name].mean()),
                       "mae_unadapted": float(unadapted[name].mean())}
    return results, errs, unadapted

  return evaluate


def test_each_kind_of_item_gets_its_own_best_factor():
  calls = []
  values, cold, results = shares.fit(fake_evaluate(0.25, 1.0, calls),
                                     params())
  assert values == (0.25, 1.0) and cold is None
  assert calls == list(shares.GRID)
  assert results["val"]["mae"] < 0.7 - 0.04
  assert results["val_new"]["mae"] < 0.9 - 0.04


def test_a_gain_within_the_noise_keeps_the_baseline_share():
  # The lowest MAE is at 0.5, but by far less than its standard error.
  values, _, results = shares.fit(
      fake_evaluate(0.5, 0.5, noise=0.05, gain=0.0002), params())
  assert values == (0.0, 0.0)
  assert results["val"]["mae"] > 0.65  # the baseline share's result


def test_without_new_item_validation_the_new_factor_follows_the_other():
  values, _, _ = shares.fit(fake_evaluate(0.5, None), params())
  assert values == (0.5, 0.5)


def test_without_any_validation_task_the_baseline_is_served():
  # Nothing shows the learned part helps (a dataset too small to give
  # validation tasks, or a model whose validation MAE is not finite).
  values, _, _ = shares.fit(fake_evaluate(None, None), params((1.0, 1.0)))
  assert values == (0.0, 0.0)


def test_cold_shares_are_fitted_on_the_predictions_before_adaptation():
  """`model.cold_share=validated`: the shares served to a user without
  ratings are chosen by the unadapted MAE, each kind on its own evidence,
  from the same evaluations; the results carry each scenario's unadapted
  MAE at its cold share and its MAE at its share."""
  calls = []
  evaluate = fake_evaluate(1.0, 0.75, calls, cold=(0.0, 0.5))
  values, cold, results = shares.fit(evaluate, params(cold=(1.0, 1.0)))
  assert calls == list(shares.GRID)  # no extra evaluation
  assert values == (1.0, 0.75) and cold == (0.0, 0.5)
  runs = {v: evaluate(params((v, v), (v, v)))[0] for v in shares.GRID}
  assert results["val"]["mae"] == runs[1.0]["val"]["mae"]
  assert results["val"]["mae_unadapted"] == runs[0.0]["val"]["mae_unadapted"]
  assert results["val_new"]["mae"] == runs[0.75]["val_new"]["mae"]
  assert (results["val_new"]["mae_unadapted"]
          == runs[0.5]["val_new"]["mae_unadapted"])
  # Without evidence before adaptation: 0, whatever the adapted shares.
  _, cold, _ = shares.fit(fake_evaluate(1.0, 1.0, cold=(0.5, 0.5), gain=0.0),
                          params(cold=(1.0, 1.0)))
  assert cold == (0.0, 0.0)
  # No new-item tasks: the cold factor of new items follows existing's.
  _, cold, _ = shares.fit(fake_evaluate(1.0, None, cold=(0.25, 1.0)),
                          params(cold=(1.0, 1.0)))
  assert cold == (0.25, 0.25)


def test_with_shares_sets_the_cold_shares_where_the_model_has_them():
  p = params(cold=(1.0, 1.0))
  q = shares.with_shares(p, (0.25, 0.5))
  np.testing.assert_array_equal(np.asarray(q["model"]["cold_share"]),
                                [0.25, 0.5])
  q = shares.with_shares(p, (0.25, 0.5), (0.0, 0.75))
  np.testing.assert_array_equal(np.asarray(q["model"]["share"]), [0.25, 0.5])
  np.testing.assert_array_equal(np.asarray(q["model"]["cold_share"]),
                                [0.0, 0.75])
  assert "cold_share" not in shares.with_shares(params(), (0.5, 0.5),
                                                (0.0, 0.0))["model"]
  assert shares.cold_present(p) and not shares.cold_present(params())


def test_a_stopped_evaluation_stops_the_fit():
  assert shares.fit(lambda p: None, params()) is None


def test_evidence_is_a_paired_test_on_the_tasks():
  rng = np.random.default_rng(1)
  base = rng.uniform(0.3, 1.2, 200)
  assert shares.evident(base - 0.01, base)  # always better: no spread
  assert not shares.evident(base + 0.01, base)
  noisy = base + rng.normal(-0.001, 0.05, 200)  # 0.3 standard errors
  assert not shares.evident(noisy, base)
  assert not shares.evident(base[:1] - 1, base[:1])  # one task: no test


def test_each_tasks_query_mae():
  np.testing.assert_allclose(metrics.mae_per_task(
      np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]),
      np.array([[2.0, 4.0, 5.0], [3.5, 9.0, 9.0]]),
      np.array([[True, True, False], [True, False, False]])), [1.5, 0.5])


def test_with_shares_keeps_everything_else_and_the_placement():
  p = params()
  q = shares.with_shares(p, (0.25, 0.0))
  np.testing.assert_array_equal(np.asarray(q["model"]["share"]), [0.25, 0.0])
  assert q["model"]["share"].sharding == p["model"]["share"].sharding
  assert q["model"]["gate"] is p["model"]["gate"]
  np.testing.assert_array_equal(np.asarray(p["model"]["share"]), [1.0, 1.0])
  assert shares.present(p) and not shares.present({"model": {"gate": 0}})


def test_the_shares_line_speaks_of_new_items_only_where_there_are_some():
  """A ratings file alone has no new item: each validation said "new items
  1.00 (as existing items': no validation user rated a new item)" and a
  second line of the new items' prior (helper Q3)."""
  from metarec_jax.train import validation  # pylint: disable=g-import-not-at-top
  scalars = {"val/share_existing_items": 0.5, "val/share_new_items": 1.0}
  assert validation.shares_line(scalars, False, False) == (
      "validated share of the learned part: existing items 0.50")
  assert validation.shares_line(scalars, True, False) == (
      "validated shares of the learned part: existing items 0.50, new items"
      " 1.00 (as existing items': no validation user rated a new item)")
  assert validation.shares_line(scalars, True, True).endswith(
      "new items 1.00")
  scalars.update({"val/cold_share_existing_items": 0.0,
                  "val/cold_share_new_items": 0.25})
  assert validation.shares_line(scalars, False, False) == (
      "validated share of the learned part: existing items 0.50; for users"
      " without ratings 0.00")
  assert validation.shares_line(scalars, True, True).endswith(
      "new items 1.00; for users without ratings 0.00, new items 0.25")
