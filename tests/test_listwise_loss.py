"""The listwise ranking term of the query loss (`model.query_rank_weight`)
and of the support loss (`model.support_rank_weight`): values by hand, its
optimum, padding, and every model family's query and support losses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import model_section, random_tasks
from metarec_jax import models
from metarec_jax.data.convert import synthetic
from metarec_jax.data.schema import item_id_spec
from metarec_jax.models.recommender import listwise_loss

SPEC = synthetic.SyntheticSpec(num_users=300, num_items=120, min_ratings=20,
                               max_ratings=40, director_vocab=30,
                               actor_vocab=40, zip_vocab=20)
FIELDS = tuple(SPEC.features()) + (item_id_spec(SPEC.num_items),)


def test_value_by_hand_ignores_padding():
  pred = jnp.array([4.0, 2.5, 3.0, 7.0])
  batch = {"rating": jnp.array([5.0, 1.0, 3.0, 5.0]),
           "mask": jnp.array([True, True, True, False])}
  gain = np.array([31.0, 1.0, 7.0])
  target = gain / gain.sum()
  logits = np.array([4.0, 2.5, 3.0]) * math.log(2.0)
  log_q = logits - np.log(np.exp(logits).sum())
  assert float(listwise_loss(pred, batch)) == pytest.approx(
      float(-(target * log_q).sum()), rel=1e-6)
  # The padded row's prediction and rating do not matter.
  moved = {"rating": batch["rating"].at[3].set(1.0), "mask": batch["mask"]}
  assert float(listwise_loss(pred.at[3].set(-5.0), moved)) == pytest.approx(
      float(listwise_loss(pred, batch)), rel=1e-6)


def test_the_optimum_is_the_rating_where_gains_are_high():
  rating = jnp.array([5.0, 4.0, 3.0, 2.0, 1.0])
  batch = {"rating": rating, "mask": jnp.ones(5, bool)}
  grad = jax.grad(listwise_loss)
  # log2(2^r - 1) plus any constant is a stationary point ...
  optimum = jnp.log2(jnp.exp2(rating) - 1.0) + 0.7
  np.testing.assert_allclose(grad(optimum, batch), 0.0, atol=1e-6)
  # ... within 0.1 of the rating for ratings 4 and 5; the right order beats
  # the reversed one.
  assert float(jnp.max(jnp.abs(optimum[:2] - 0.7 - rating[:2]))) < 0.1
  assert float(listwise_loss(rating, batch)) < float(
      listwise_loss(rating[::-1], batch))


@pytest.mark.parametrize("rating,mask", [
    ([0.0, 0.0, 0.0], [True, True, True]),  # no gain at all
    ([3.0, 5.0, 1.0], [False, False, False]),  # padding only
])
def test_a_set_without_gain_has_zero_loss_and_a_finite_zero_gradient(
    rating, mask):
  batch = {"rating": jnp.array(rating), "mask": jnp.array(mask)}
  pred = jnp.array([1.0, 2.0, 3.0])
  assert float(listwise_loss(pred, batch)) == 0.0
  grad = jax.grad(listwise_loss)(pred, batch)
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) == 0.0
  # Second order too (the inner loop differentiates the loss twice).
  hess = jax.hessian(listwise_loss)(pred, batch)
  assert np.all(np.isfinite(hess))


def test_masked_loss_adds_the_mean_over_sets():
  r = np.random.default_rng(0)
  pred = jnp.asarray(r.normal(3.0, 1.0, (4, 6)), jnp.float32)
  batch = {"rating": jnp.asarray(r.integers(1, 6, (4, 6)), jnp.float32),
           "mask": jnp.asarray(r.random((4, 6)) < 0.8)}
  plain = models.masked_loss(pred, batch, "huber", 0.5)
  ranked = models.masked_loss(pred, batch, "huber", 0.5, rank_weight=0.3)
  expected = plain + 0.3 * jnp.mean(listwise_loss(pred, batch))
  assert float(ranked) == pytest.approx(float(expected), rel=1e-6)


CASES = {
    "melu": {"name": "melu"},
    "melu-anchored": {"name": "melu", "anchor": True},
    "idemb": {"name": "idemb"},
    "idemb-anchored": {"name": "idemb", "anchor": True},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_model_family_adds_the_term_to_its_query_loss_only(case):
  # Per item ID (row 0 is padding): 5 ratings of mean 3.5 each.
  counts = np.full(SPEC.num_items + 1, 5.0)
  means = (np.full(SPEC.num_items, 3.5), np.full(SPEC.num_items, 0.5))

  def build(weight):
    cfg = model_section({**CASES[case], "embed_dim": 4, "hidden": (6,),
                         "calibration": "none",
                         "query_rank_weight": weight})
    return models.build(cfg, FIELDS, rating_mean=3.5, item_means=means,
                        inner_lr=0.1, item_counts=counts)

  plain, ranked = build(0.0), build(0.5)
  assert ranked.query_loss_fn is not None
  params = plain.init(jax.random.PRNGKey(0))
  task = jax.tree.map(lambda x: jnp.asarray(x[0]),
                      random_tasks(FIELDS, n_tasks=1)["query"])
  task["rating"] = task["rating"].astype(jnp.float32)
  query = lambda m: m.query_loss_fn or m.loss_fn  # noqa: E731
  pred = ranked.predict_unmapped(params, task["features"])
  expected = query(plain)(params, task) + 0.5 * listwise_loss(pred, task)
  assert float(query(ranked)(params, task)) == pytest.approx(
      float(expected), rel=1e-5)
  # The inner loop's loss is unchanged.
  assert float(ranked.loss_fn(params, task)) == pytest.approx(
      float(plain.loss_fn(params, task)), rel=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_model_family_adds_the_support_term_to_its_support_loss_only(
    case):
  counts = np.full(SPEC.num_items + 1, 5.0)
  means = (np.full(SPEC.num_items, 3.5), np.full(SPEC.num_items, 0.5))

  def build(support, query=0.0):
    cfg = model_section({**CASES[case], "embed_dim": 4, "hidden": (6,),
                         "calibration": "none", "query_rank_weight": query,
                         "support_rank_weight": support})
    return models.build(cfg, FIELDS, rating_mean=3.5, item_means=means,
                        inner_lr=0.1, item_counts=counts)

  plain, ranked = build(0.0), build(0.7)
  params = plain.init(jax.random.PRNGKey(1))
  task = jax.tree.map(lambda x: jnp.asarray(x[0]),
                      random_tasks(FIELDS, n_tasks=1)["support"])
  task["rating"] = task["rating"].astype(jnp.float32)
  # Training's prediction (an anchored model's share is 1 there).
  pred = ranked.predict_unmapped(params, task["features"])
  expected = plain.loss_fn(params, task) + 0.7 * listwise_loss(pred, task)
  assert float(ranked.loss_fn(params, task)) == pytest.approx(
      float(expected), rel=1e-5)
  # The meta-objective is unchanged, with or without its own term.
  query = lambda m: m.query_loss_fn or m.loss_fn  # noqa: E731
  assert float(query(ranked)(params, task)) == pytest.approx(
      float(query(plain)(params, task)), rel=1e-6)
  both, query_only = build(0.7, query=0.3), build(0.0, query=0.3)
  assert float(query(both)(params, task)) == pytest.approx(
      float(query(query_only)(params, task)), rel=1e-6)
  # A shift leaves the term unchanged: it never moves a user bias.
  grad = lambda m: jax.grad(m.loss_fn)(params, task)  # noqa: E731
  for name in ("user_bias", "base_bias"):
    if name in params:
      assert float(grad(ranked)[name]) == pytest.approx(
          float(grad(plain)[name]), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("key", ["query_rank_weight", "support_rank_weight"])
def test_a_ranking_loss_with_a_rank_weight_is_refused(key):
  cfg = model_section({"name": "melu", "loss": "bce", key: 1.0,
                       "calibration": "none", "popularity_prior": False})
  with pytest.raises(ValueError, match=key):
    models.build(cfg, FIELDS, rating_mean=0.5)
