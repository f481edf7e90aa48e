"""Validated shares (`train.shares`): fitted per kind of item on its own
validation scenario, placed like the parameter they replace."""

import jax
import numpy as np

from metarec_jax.train import shares


def params(values=(1.0, 1.0)):
  return {"model": {"share": jax.numpy.asarray(values, jax.numpy.float32),
                    "gate": jax.numpy.float32(0.5)},
          "inner": None}


def fake_evaluate(best_existing, best_new, calls=None):
  """MAE per scenario: distance of its own share to its best value."""

  def evaluate(meta_params):
    value = np.asarray(meta_params["model"]["share"])
    assert value[0] == value[1]  # the grid moves both together
    if calls is not None:
      calls.append(float(value[0]))
    out = {"val": {"mae": 0.7 + abs(value[0] - best_existing)}}
    out["val_new"] = {"mae": None if best_new is None
                      else 0.9 + abs(value[1] - best_new)}
    return out

  return evaluate


def test_each_kind_of_item_gets_its_own_best_factor():
  calls = []
  values, results = shares.fit(fake_evaluate(0.25, 1.0, calls), params())
  assert values == (0.25, 1.0)
  assert calls == list(shares.GRID)
  assert results["val"]["mae"] == 0.7 and results["val_new"]["mae"] == 0.9


def test_without_new_item_validation_the_new_factor_follows_the_other():
  values, results = shares.fit(fake_evaluate(0.5, None), params())
  assert values == (0.5, 0.5)
  assert results["val"]["mae"] == 0.7


def test_ties_go_to_the_model_as_trained():
  flat = lambda p: {"val": {"mae": 0.7}, "val_new": {"mae": 0.8}}
  values, _ = shares.fit(flat, params((0.0, 0.0)))
  assert values == (1.0, 1.0)


def test_a_stopped_evaluation_stops_the_fit():
  assert shares.fit(lambda p: None, params()) is None


def test_with_shares_keeps_everything_else_and_the_placement():
  p = params()
  q = shares.with_shares(p, (0.25, 0.0))
  np.testing.assert_array_equal(np.asarray(q["model"]["share"]), [0.25, 0.0])
  assert q["model"]["share"].sharding == p["model"]["share"].sharding
  assert q["model"]["gate"] is p["model"]["gate"]
  np.testing.assert_array_equal(np.asarray(p["model"]["share"]), [1.0, 1.0])
  assert shares.present(p) and not shares.present({"model": {"gate": 0}})
