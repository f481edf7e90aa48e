"""The dual (Gram) form and feature hoisting equal the plain formulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import model_section, random_tasks
from metarec_jax import meta, models
from metarec_jax.data.convert import synthetic


@pytest.fixture(autouse=True)
def float64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def melu_and_tasks(num_tasks=3, n_support=7, n_query=4, seed=0):
  spec = synthetic.SyntheticSpec(director_vocab=20, actor_vocab=30,
                                 zip_vocab=10)
  fields = spec.features()
  cfg = model_section({"name": "melu", "features": (), "embed_dim": 6,
                       "hidden": (8, 5)})
  model = models.build(cfg, fields, rating_mean=3.5)
  params = jax.tree.map(lambda x: x.astype(jnp.float64),
                        model.init(jax.random.PRNGKey(seed)))
  return model, params, random_tasks(fields, num_tasks, n_support, n_query,
                                     seed, keep=0.8)


def grads_of(loss_fn, params, tasks, config, inner=None):
  mp = {"model": params,
        "inner": inner or meta.init_inner(params, config=config)}
  return jax.jit(lambda mp, t: meta.meta_grad(loss_fn, mp, t, config=config)
                 )(mp, tasks)


# Every row of the table that the dual form may run (a rate rule written
# for the plain inner loop alone, `inner.inner_optimizer`, and not for the
# dual form's `inner.step_rates`, shows here).
DUAL = [name for name, row in meta.ALGORITHMS.items()
        if row.dual_form and row.steps]


@pytest.mark.parametrize("algorithm", DUAL)
@pytest.mark.parametrize("second_order", [True, False])
def test_dual_form_and_hoisting_equal_the_plain_meta_gradient(
    algorithm, second_order):
  model, params, tasks = melu_and_tasks()
  assert isinstance(model.loss_fn, meta.LinearHead)
  plain_loss = models.plain_loss(model.module)
  base = meta.MetaConfig(algorithm=algorithm, inner_steps=3, inner_lr=0.05,
                         second_order=second_order, adapt=model.adapt,
                         dual_form=False)
  inner = None
  if base.spec.encoder:  # the hybrid's encoder reads the LinearHead's rows:
    # its plain form is the reference
    plain_loss = model.loss_fn
    inner = meta.init_inner(params, config=base, loss_fn=model.loss_fn,
                            support=jax.tree.map(lambda a: a[0],
                                                 tasks["support"]))
  ref_loss, ref = grads_of(plain_loss, params, tasks, base, inner)
  for config in (base, base.replace(dual_form=True)):
    loss, grads = grads_of(model.loss_fn, params, tasks, config, inner)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-12)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(grads)):
      np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


def test_dual_adapt_materialises_the_plain_adapted_parameters():
  model, params, tasks = melu_and_tasks()
  support = jax.tree.map(lambda a: a[0], tasks["support"])
  config = meta.MetaConfig(inner_steps=4, inner_lr=0.1, adapt=model.adapt)
  plain = meta.adapt(models.plain_loss(model.module), params, support,
                     config=config)
  dual = meta.adapt(model.loss_fn, params, support, config=config)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(dual)):
    np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_dual_form_is_not_used_where_it_does_not_apply():
  model, params, _ = melu_and_tasks()
  part = meta.paths.partition(params, model.adapt)
  lh = model.loss_fn
  assert lh.dual_applies(meta.MetaConfig(adapt=model.adapt), part)
  assert not lh.dual_applies(
      meta.MetaConfig(adapt=model.adapt, inner_optimizer="adam"), part)
  assert not lh.dual_applies(
      meta.MetaConfig(adapt=model.adapt, algorithm="metasgd"), part)
  everything = meta.paths.partition(params, ())
  assert not lh.features_fixed(everything)
  assert not lh.dual_applies(meta.MetaConfig(), everything)


def test_adapting_the_embeddings_falls_back_to_the_plain_computation():
  model, params, tasks = melu_and_tasks()
  config = meta.MetaConfig(inner_steps=2, inner_lr=0.05, adapt=(".*",))
  loss_a, ga = grads_of(models.plain_loss(model.module), params, tasks, config)
  loss_b, gb = grads_of(model.loss_fn, params, tasks, config)
  assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-12)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("algorithm", ["metasgd", "reptile"])
def test_other_algorithms_through_the_linear_head_equal_the_plain_loss(
    algorithm):
  """Meta-SGD (hoisted features, no dual form) and Reptile (dual-form adapt,
  frozen-leaf gradients through the head) give the plain values. (First
  order keeps the test fast; second-order hoisting is covered above with
  `dual_form=False`.)"""
  model, params, tasks = melu_and_tasks()
  config = meta.MetaConfig(algorithm=algorithm, inner_steps=3, inner_lr=0.05,
                           adapt=model.adapt, second_order=False)
  loss_a, ga = grads_of(models.plain_loss(model.module), params, tasks,
                        config)
  loss_b, gb = grads_of(model.loss_fn, params, tasks, config)
  assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-12)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
  # The embeddings (frozen) get a gradient under every algorithm.
  assert np.abs(np.asarray(gb["model"]["embed"]["genre"]["embedding"])).max(
  ) > 0
