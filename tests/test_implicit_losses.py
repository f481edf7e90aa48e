"""Ranking losses: values by hand, exact second-order meta-gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metarec_jax import meta
from metarec_jax.models.recommender import RANKING_LOSSES, ranking_loss


@pytest.fixture(autouse=True)
def float64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def sp(x):  # softplus = -log sigmoid(-x)
  return math.log1p(math.exp(x))


def test_losses_by_hand():
  # Two positives (2.0, 0.0), one negative (1.0), one padded row.
  score = jnp.array([2.0, 0.0, 1.0, 9.0])
  batch = {"rating": jnp.array([1.0, 1.0, 0.0, 1.0]),
           "mask": jnp.array([True, True, True, False])}
  bce = (sp(-2.0) + sp(0.0) + sp(1.0)) / 3
  assert float(ranking_loss(score, batch, "bce")) == pytest.approx(bce)
  # One negative: one triple, with the first positive.
  bpr = sp(-(2.0 - 1.0))
  assert float(ranking_loss(score, batch, "bpr")) == pytest.approx(bpr)
  soft = ((math.log(math.exp(2) + math.exp(1)) - 2)
          + (math.log(1 + math.exp(1)) - 0)) / 2
  assert float(ranking_loss(score, batch, "softmax")) == pytest.approx(soft)


def test_bpr_pairs_each_negative_with_the_positives_in_turn():
  # Positives 2.0 and 0.0 (rows 0, 2), negatives 1.0, -1.0, 0.5, 3.0 in row
  # order, a padded row: two negatives per positive, taken in turn.
  score = jnp.array([2.0, 1.0, 0.0, -1.0, 0.5, 7.0, 3.0])
  batch = {"rating": jnp.array([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
           "mask": jnp.array([True, True, True, True, True, False, True])}
  bpr = (sp(-(2.0 - 1.0)) + sp(-(0.0 + 1.0)) + sp(-(2.0 - 0.5))
         + sp(-(0.0 - 3.0))) / 4
  assert float(ranking_loss(score, batch, "bpr")) == pytest.approx(bpr)
  # Tasks batched on a leading axis, one without positives (loss 0).
  both = jax.tree.map(lambda a: jnp.stack([a, a]), batch)
  both["rating"] = both["rating"].at[1].set(0.0)
  np.testing.assert_allclose(
      np.asarray(ranking_loss(jnp.stack([score, score]), both, "bpr")),
      [bpr, 0.0], rtol=1e-6)


@pytest.mark.parametrize("kind", RANKING_LOSSES)
def test_empty_sets_have_zero_loss_and_gradient(kind):
  batch = {"rating": jnp.array([1.0, 0.0]), "mask": jnp.array([False, False])}
  value, grad = jax.value_and_grad(
      lambda s: ranking_loss(s, batch, kind))(jnp.array([0.3, -0.2]))
  assert float(value) == 0.0
  np.testing.assert_array_equal(np.asarray(grad), 0.0)


def mlp_scorer(kind):
  def loss(params, batch):
    h = jnp.tanh(batch["x"] @ params["l1"]["w"] + params["l1"]["b"])
    score = (h @ params["l2"]["w"] + params["l2"]["b"])[..., 0]
    return ranking_loss(score, batch, kind)
  return loss


def labelled_tasks(num_tasks=3, n=6, d=3, seed=1):
  r = np.random.default_rng(seed)

  def rows():
    label = np.tile(np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), (num_tasks, 1))
    mask = np.ones((num_tasks, n), bool)
    mask[0, 2] = mask[1, 5] = False  # padding rows in some tasks
    return {"x": jnp.asarray(r.normal(size=(num_tasks, n, d))),
            "rating": jnp.asarray(label), "mask": jnp.asarray(mask)}

  return {"support": rows(), "query": rows()}


def central_differences(f, params, eps=1e-6):
  flat, unravel = ravel_pytree(params)
  f_flat = jax.jit(jax.vmap(lambda v: f(unravel(v))))
  steps = np.eye(len(flat)) * eps
  return np.asarray(f_flat(flat + steps) - f_flat(flat - steps)) / (2 * eps)


@pytest.mark.parametrize("kind", RANKING_LOSSES)
def test_second_order_meta_gradient_matches_finite_differences(kind):
  r = np.random.default_rng(0)
  params = {"l1": {"w": jnp.asarray(r.normal(size=(3, 4))),
                   "b": jnp.asarray(r.normal(size=4) * 0.1)},
            "l2": {"w": jnp.asarray(r.normal(size=(4, 1))),
                   "b": jnp.asarray([0.2])}}
  tasks = labelled_tasks()
  config = meta.MetaConfig(inner_steps=3, inner_lr=0.3, adapt=("^l2/",))
  loss_fn = mlp_scorer(kind)
  _, grads = meta.meta_grad(loss_fn, {"model": params, "inner": None}, tasks,
                            config=config)
  reference = central_differences(
      lambda p: meta.meta_loss(loss_fn, p, tasks, config=config), params)
  got = ravel_pytree(grads["model"])[0]
  np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-8)
  # The second-order terms matter: first-order MAML differs.
  fo = meta.MetaConfig(inner_steps=3, inner_lr=0.3, adapt=("^l2/",),
                       second_order=False)
  _, fo_grads = meta.meta_grad(loss_fn, {"model": params, "inner": None},
                               tasks, config=fo)
  assert not np.allclose(ravel_pytree(fo_grads["model"])[0], reference,
                         rtol=1e-4)
