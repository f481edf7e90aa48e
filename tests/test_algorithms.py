"""The meta-learning family: every algorithm against finite differences or
its closed form, in float64 on small smooth models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from flax import traverse_util

from metarec_jax import meta
from metarec_jax.meta import paths


@pytest.fixture(autouse=True)
def float64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def mlp_loss(params, batch):
  """A small smooth MLP regression loss with a row mask (like the models').

  `extra` multiplies the feature `z`: a task whose support rows have `z = 0`
  gives `extra` an inner gradient of exactly zero.
  """
  h = jnp.tanh(batch["x"] @ params["l1"]["w"] + params["l1"]["b"])
  pred = (h @ params["l2"]["w"] + params["l2"]["b"])[..., 0]
  pred = pred + batch["z"] * params["extra"]
  m = batch["mask"].astype(pred.dtype)
  return jnp.sum(m * (pred - batch["y"]) ** 2) / jnp.maximum(jnp.sum(m), 1.0)


def init_params(seed=0, d=3, h=4):
  r = np.random.default_rng(seed)
  return {"l1": {"w": jnp.asarray(r.normal(size=(d, h))),
                 "b": jnp.asarray(r.normal(size=h) * 0.1)},
          "l2": {"w": jnp.asarray(r.normal(size=(h, 1))),
                 "b": jnp.asarray([0.2])},
          "extra": jnp.asarray([0.3])}


def make_tasks(num_tasks=3, n_support=5, n_query=4, d=3, seed=1,
               support_z=True):
  r = np.random.default_rng(seed)

  def rows(n, z):
    return {"x": jnp.asarray(r.normal(size=(num_tasks, n, d))),
            "y": jnp.asarray(r.normal(size=(num_tasks, n))),
            "z": jnp.asarray(r.normal(size=(num_tasks, n)) if z
                             else np.zeros((num_tasks, n))),
            "mask": jnp.ones((num_tasks, n), bool)}

  return {"support": rows(n_support, support_z), "query": rows(n_query, True)}


def task(tasks, t):
  return jax.tree.map(lambda a: a[t], tasks)


def central_differences(f, tree, eps=1e-6):
  """Central differences of the scalar `f` along every element of `tree`."""
  flat, unravel = ravel_pytree(tree)
  f_flat = jax.jit(jax.vmap(lambda v: f(unravel(v))))
  steps = np.eye(len(flat)) * eps
  return np.asarray(f_flat(flat + steps) - f_flat(flat - steps)) / (2 * eps)


@functools.lru_cache(maxsize=None)
def meta_grad_fn(config, loss_fn=mlp_loss):
  """`(meta_params, tasks) -> meta_grad(...)`, jitted once per config (and
  shapes), so tests that share a config share the compiled program."""
  return jax.jit(lambda mp, tasks: meta.meta_grad(loss_fn, mp, tasks,
                                                  config=config))


@functools.lru_cache(maxsize=None)
def meta_losses_fn(config):
  """`(meta_params with a leading batch axis, tasks) -> meta_loss` each."""
  return jax.jit(jax.vmap(
      lambda mp, tasks: meta.meta_loss(mlp_loss, mp["model"], tasks,
                                       config=config, inner=mp["inner"]),
      in_axes=(0, None)))


def meta_loss_differences(config, meta_params, tasks, eps=1e-6):
  """Central differences of `meta_loss` along every meta-parameter, and
  the meta-loss."""
  flat, unravel = ravel_pytree(meta_params)
  steps = np.eye(len(flat)) * eps
  points = jax.vmap(unravel)(jnp.concatenate([flat + steps, flat - steps]))
  losses = np.asarray(meta_losses_fn(config)(points, tasks))
  plus, minus = losses[:len(flat)], losses[len(flat):]
  # Also the loss itself, to O(eps^2): the mean of every pair.
  return (plus - minus) / (2 * eps), float(np.mean((plus + minus) / 2))


def adapt_fn(config, loss_fn=mlp_loss):
  return jax.jit(lambda params, support, inner=None: meta.adapt(
      loss_fn, params, support, config=config, inner=inner))


def perturbed_inner(params, config, seed=5):
  """`init_inner` with every rate moved to a distinct value, so that a rate
  applied to the wrong element or step changes the result."""
  inner = meta.init_inner(params, config=config)
  r = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: x * (1.0 + 0.5 * r.uniform(-1, 1, size=x.shape)), inner)


def check_against_finite_differences(config, meta_params, tasks,
                                     rtol=1e-6, atol=1e-8):
  loss, grads = meta_grad_fn(config)(meta_params, tasks)
  reference, center = meta_loss_differences(config, meta_params, tasks)
  assert float(loss) == pytest.approx(center, rel=1e-9)
  np.testing.assert_allclose(ravel_pytree(grads)[0], reference, rtol=rtol,
                             atol=atol)
  return grads


@jax.jit
def flat_loss(flat, batch):
  return mlp_loss(traverse_util.unflatten_dict(flat, sep="/"), batch)


flat_grad = jax.jit(jax.grad(flat_loss))


def task_loss_fn(config):
  return jax.jit(lambda params, one, inner=None: meta.task_loss(
      mlp_loss, params, one, config=config, inner=inner))


def manual_sgd_query_losses(params, one_task, rate_of, steps):
  """Plain-Python inner loop: the query loss after each step, where
  `rate_of(path, step)` is the rate of each leaf (broadcast elementwise)."""
  fast = paths.partition(params, ()).adapted
  out = []
  for k in range(steps):
    grads = flat_grad(fast, one_task["support"])
    fast = {p: v - rate_of(p, k) * grads[p] for p, v in fast.items()}
    out.append(flat_loss(fast, one_task["query"]))
  return out


# --- Meta-SGD --------------------------------------------------------------


@pytest.mark.parametrize("second_order", [True, False])
def test_metasgd_gradient_matches_finite_differences(second_order):
  params, tasks = init_params(), make_tasks()
  config = meta.MetaConfig(algorithm="metasgd", inner_steps=2, inner_lr=0.1,
                           second_order=second_order)
  inner = perturbed_inner(params, config)
  mp = {"model": params, "inner": inner}
  if second_order:
    grads = check_against_finite_differences(config, mp, tasks)
  else:  # first order: no FD reference; the rates still learn (below)
    _, grads = meta_grad_fn(config)(mp, tasks)
  rate_grads = jax.tree.leaves(grads["inner"])
  assert jax.tree.structure(grads["inner"]) == jax.tree.structure(inner)
  assert all(np.isfinite(g).all() for g in rate_grads)
  # Every element has its own rate, and every one of them gets a gradient.
  assert all((np.abs(g) > 0).all() for g in rate_grads)


def test_metasgd_applies_one_rate_per_element():
  params, tasks = init_params(), make_tasks(num_tasks=2)
  config = meta.MetaConfig(algorithm="metasgd", inner_steps=2, inner_lr=0.1)
  inner = perturbed_inner(params, config)
  assert all(r.shape == p.shape for r, p in
             zip(jax.tree.leaves(inner), jax.tree.leaves(params)))
  rates = traverse_util.flatten_dict(inner, sep="/")
  for t in range(2):
    expect = manual_sgd_query_losses(params, task(tasks, t),
                                     lambda p, k: rates[p], 2)[-1]
    got = task_loss_fn(config)(params, task(tasks, t), inner)
    assert float(got) == pytest.approx(float(expect), rel=1e-12)


# --- MAML++ ----------------------------------------------------------------


def test_mamlpp_gradient_matches_finite_differences():
  params, tasks = init_params(), make_tasks()
  config = meta.MetaConfig(algorithm="mamlpp", inner_steps=3, inner_lr=0.1,
                           msl_weights=(0.2, 0.3, 0.5))
  mp = {"model": params, "inner": perturbed_inner(params, config)}
  grads = check_against_finite_differences(config, mp, tasks)
  assert all(g.shape == (3,) and (np.abs(g) > 0).all()
             for g in jax.tree.leaves(grads["inner"]))


def test_mamlpp_loss_is_the_weighted_loss_after_every_step():
  params, tasks = init_params(), make_tasks(num_tasks=2)
  weights = (0.2, 0.3, 0.5)
  config = meta.MetaConfig(algorithm="mamlpp", inner_steps=3, inner_lr=0.1,
                           msl_weights=weights)
  inner = perturbed_inner(params, config)
  rates = traverse_util.flatten_dict(inner, sep="/")
  for t in range(2):
    per_step = manual_sgd_query_losses(params, task(tasks, t),
                                       lambda p, k: rates[p][k], 3)
    expect = sum(w * float(l) for w, l in zip(weights, per_step))
    got = task_loss_fn(config)(params, task(tasks, t), inner)
    assert float(got) == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("msl_weights", [(), (0.0, 0.0, 1.0)])
def test_mamlpp_with_initial_rates_and_last_step_loss_is_maml(msl_weights):
  params, tasks = init_params(), make_tasks()
  maml = meta.MetaConfig(inner_steps=3, inner_lr=0.1)
  mamlpp = maml.replace(algorithm="mamlpp", msl_weights=msl_weights)
  l1, g1 = meta_grad_fn(maml)({"model": params, "inner": None}, tasks)
  l2, g2 = meta_grad_fn(mamlpp)(
      {"model": params, "inner": meta.init_inner(params, config=mamlpp)},
      tasks)
  assert float(l2) == pytest.approx(float(l1), rel=1e-12)
  np.testing.assert_allclose(ravel_pytree(g2["model"])[0],
                             ravel_pytree(g1["model"])[0], rtol=1e-10,
                             atol=1e-14)


@pytest.mark.parametrize("trained_steps", [1, 5])
def test_mamlpp_rates_of_another_number_of_steps_are_refused(trained_steps):
  """JAX clamps an index past the end of the per-step rates: rates for 1
  step ran 3 steps at that rate, rates for 5 ran the first 3 of them,
  without a word (an `inner` from other settings, or `meta.inner_steps`
  changed after training)."""
  params, tasks = init_params(), make_tasks(num_tasks=2)
  config = meta.MetaConfig(algorithm="mamlpp", inner_steps=3, inner_lr=0.1)
  inner = meta.init_inner(params, config=config.replace(
      inner_steps=trained_steps))
  for use in (lambda: meta.adapt(mlp_loss, params, task(tasks, 0)["support"],
                                 config=config, inner=inner),
              lambda: meta_grad_fn(config)({"model": params, "inner": inner},
                                           tasks)):
    with pytest.raises(ValueError, match=(
        rf"inner\['extra'\] holds rates of shape \({trained_steps},\), one"
        r" per inner step, but meta.inner_steps is 3")):
      use()
  meta.adapt(mlp_loss, params, task(tasks, 0)["support"], config=config,
             inner=meta.init_inner(params, config=config))  # its own: fine


def test_metasgd_rates_that_do_not_fit_the_adapted_leaves_are_named():
  """Rates made for another meta.adapt failed with KeyError: 'l2/w' deep in
  the inner step, rates of another shape with a broadcasting TypeError."""
  params, tasks = init_params(), make_tasks(num_tasks=2)
  config = meta.MetaConfig(algorithm="metasgd", inner_steps=2, inner_lr=0.1,
                           adapt=("l2/",))
  other = meta.init_inner(params, config=config.replace(adapt=("l1/",)))
  support = task(tasks, 0)["support"]
  with pytest.raises(ValueError, match="inner holds no rates of the adapted"
                     " parameter"):
    meta.adapt(mlp_loss, params, support, config=config, inner=other)
  own = meta.init_inner(params, config=config)
  own["l2"]["w"] = own["l2"]["w"][:1]
  with pytest.raises(ValueError, match=r"inner\['l2/w'\] has shape"):
    meta.adapt(mlp_loss, params, support, config=config, inner=own)


# --- MAML with Adam and momentum inner optimizers ----------------------------


@pytest.mark.parametrize("inner_optimizer", ["adam", "momentum"])
def test_maml_with_inner_optimizer_matches_finite_differences(
    inner_optimizer):
  params, tasks = init_params(), make_tasks()
  config = meta.MetaConfig(inner_steps=3, inner_lr=0.05,
                           inner_optimizer=inner_optimizer)
  check_against_finite_differences(config, {"model": params, "inner": None},
                                   tasks, rtol=1e-5)


def test_momentum_inner_loop_is_heavy_ball_sgd():
  params, tasks = init_params(), make_tasks(num_tasks=1)
  config = meta.MetaConfig(inner_steps=3, inner_lr=0.05,
                           inner_optimizer="momentum", momentum=0.8)
  one = task(tasks, 0)
  fast = paths.partition(params, ()).adapted
  velocity = {p: jnp.zeros_like(v) for p, v in fast.items()}
  for _ in range(3):
    grads = flat_grad(fast, one["support"])
    velocity = {p: grads[p] + 0.8 * velocity[p] for p in fast}
    fast = {p: v - 0.05 * velocity[p] for p, v in fast.items()}
  adapted = adapt_fn(config)(params, one["support"])
  for p, v in paths.partition(adapted, ()).adapted.items():
    np.testing.assert_allclose(v, fast[p], rtol=1e-12)


@pytest.mark.parametrize("case", ["leaf_without_support_gradient",
                                  "empty_support"])
def test_adam_second_order_stays_finite_where_inner_gradients_are_zero(case):
  params = init_params()
  tasks = make_tasks(support_z=False)  # `extra` never moves the support loss
  if case == "empty_support":
    tasks["support"]["mask"] = jnp.zeros_like(tasks["support"]["mask"])
  # The config of the Adam test above: the compiled programs are shared.
  config = meta.MetaConfig(inner_steps=3, inner_lr=0.05,
                           inner_optimizer="adam")
  mp = {"model": params, "inner": None}
  grads = check_against_finite_differences(config, mp, tasks, rtol=1e-5)
  assert np.abs(grads["model"]["extra"]).max() > 0
  # Without eps_root the same derivative is 0 * inf: this is what the
  # positive eps_root protects.
  _, bad = meta_grad_fn(config.replace(adam_eps_root=0.0))(mp, tasks)
  assert not np.isfinite(ravel_pytree(bad)[0]).all()


# --- Reptile -----------------------------------------------------------------


def quadratic_loss(params, batch):
  """0.5 * ||theta - c||^2: SGD gives theta_k - c = (1 - lr)^k (theta - c)."""
  return 0.5 * sum(jnp.sum((p - c) ** 2) for p, c in
                   zip(jax.tree.leaves(params), jax.tree.leaves(batch)))


def quadratic_tasks(theta, num_tasks=4, seed=2):
  r = np.random.default_rng(seed)

  def targets():
    return jax.tree.map(
        lambda v: jnp.asarray(r.normal(size=(num_tasks,) + v.shape)), theta)

  return {"support": targets(), "query": targets()}


@pytest.mark.parametrize("steps,lr", [(1, 0.3), (4, 0.3), (3, 1.5)])
def test_reptile_update_is_its_closed_form_on_a_quadratic(steps, lr):
  theta = {"a": jnp.asarray([1.0, -2.0, 0.5]), "b": {"c": jnp.asarray([3.0])}}
  tasks = quadratic_tasks(theta)
  config = meta.MetaConfig(algorithm="reptile", inner_steps=steps,
                           inner_lr=lr)
  loss, grads = meta_grad_fn(config, quadratic_loss)(
      {"model": theta, "inner": None}, tasks)
  shrink = (1.0 - lr) ** steps
  for path, value in paths.partition(theta, ()).adapted.items():
    cs = traverse_util.flatten_dict(tasks["support"], sep="/")[path]
    expect = np.mean((1.0 - shrink) * (value - cs), axis=0)
    np.testing.assert_allclose(
        traverse_util.flatten_dict(grads["model"], sep="/")[path], expect,
        rtol=1e-12, atol=1e-15)
  # The reported loss is the query loss after adaptation.
  flat_s = traverse_util.flatten_dict(tasks["support"], sep="/")
  flat_q = traverse_util.flatten_dict(tasks["query"], sep="/")
  adapted = {p: flat_s[p] + shrink * (v - flat_s[p])
             for p, v in traverse_util.flatten_dict(theta, sep="/").items()}
  expect_loss = np.mean(sum(0.5 * np.sum((adapted[p] - flat_q[p]) ** 2,
                                         axis=-1) for p in adapted))
  assert float(loss) == pytest.approx(float(expect_loss), rel=1e-12)
  assert grads["inner"] is None


def test_reptile_moves_frozen_leaves_along_the_query_gradient():
  """With partial adaptation the frozen leaves get the query-loss gradient
  at the adapted parameters; the adapted ones keep Reptile's direction."""
  theta = {"a": jnp.asarray([1.0, -2.0, 0.5]), "b": {"c": jnp.asarray([3.0])}}
  tasks = quadratic_tasks(theta)
  lr, steps = 0.3, 2
  config = meta.MetaConfig(algorithm="reptile", inner_steps=steps,
                           inner_lr=lr, adapt=("^a$",))
  _, grads = meta_grad_fn(config, quadratic_loss)(
      {"model": theta, "inner": None}, tasks)
  cs, cq = tasks["support"], tasks["query"]
  np.testing.assert_allclose(
      grads["model"]["a"],
      np.mean((1 - (1 - lr) ** steps) * (theta["a"] - cs["a"]), axis=0),
      rtol=1e-12)
  np.testing.assert_allclose(grads["model"]["b"]["c"],
                             np.mean(theta["b"]["c"] - cq["b"]["c"], axis=0),
                             rtol=1e-12)


def test_reptile_frozen_gradient_on_an_mlp_matches_finite_differences():
  params, tasks = init_params(), make_tasks()
  config = meta.MetaConfig(algorithm="reptile", inner_steps=2, inner_lr=0.1,
                           adapt=("^l2/",))
  _, grads = meta_grad_fn(config)({"model": params, "inner": None}, tasks)
  adapted = jax.jit(jax.vmap(adapt_fn(config), in_axes=(None, 0)))(
      params, tasks["support"])
  part = paths.partition(params, config.adapt)

  def query_loss(frozen):
    fast = paths.partition(adapted, config.adapt).adapted
    return jnp.mean(jax.vmap(lambda f, q: mlp_loss(part.merge(f, frozen), q))(
        fast, tasks["query"]))

  reference = central_differences(query_loss, part.frozen)
  got = paths.partition(grads["model"], config.adapt).frozen
  np.testing.assert_allclose(ravel_pytree(got)[0], reference, rtol=1e-6,
                             atol=1e-9)
  deltas = paths.partition(grads["model"], config.adapt).adapted
  fast = paths.partition(adapted, config.adapt).adapted
  for p, v in part.adapted.items():
    np.testing.assert_allclose(deltas[p], np.mean(v - fast[p], axis=0),
                               rtol=1e-12)


# --- pretrain + fine-tune ----------------------------------------------------


def test_pretrain_gradient_is_the_plain_joint_loss_gradient():
  params, tasks = init_params(), make_tasks()
  config = meta.MetaConfig(algorithm="pretrain", inner_steps=3, inner_lr=0.1)
  loss, grads = meta_grad_fn(config)({"model": params, "inner": None},
                                     tasks)

  def joint(p):
    per_task = [0.5 * (mlp_loss(p, task(tasks, t)["support"])
                       + mlp_loss(p, task(tasks, t)["query"]))
                for t in range(3)]
    return sum(per_task) / 3

  expect_loss, expect = jax.jit(jax.value_and_grad(joint))(params)
  assert float(loss) == pytest.approx(float(expect_loss), rel=1e-12)
  np.testing.assert_allclose(ravel_pytree(grads["model"])[0],
                             ravel_pytree(expect)[0], rtol=1e-10)
  assert grads["inner"] is None
  assert meta.init_inner(params, config=config) is None


def test_pretrain_fine_tunes_with_sgd_at_evaluation():
  params, tasks = init_params(), make_tasks(num_tasks=1)
  config = meta.MetaConfig(algorithm="pretrain", inner_steps=3, inner_lr=0.1)
  one = task(tasks, 0)
  expect = manual_sgd_query_losses(params, one, lambda p, k: 0.1, 3)[-1]
  adapted = adapt_fn(config)(params, one["support"])
  assert float(mlp_loss(adapted, one["query"])) == pytest.approx(
      float(expect), rel=1e-12)
  assert float(mlp_loss(adapted, one["support"])) < float(
      mlp_loss(params, one["support"]))
  assert float(task_loss_fn(config)(params, one)) == (
      pytest.approx(float(expect), rel=1e-12))


# --- partial adaptation, every algorithm -------------------------------------


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile", "metasgd",
                                       "mamlpp", "pretrain"])
def test_partial_adaptation_leaves_other_leaves_untouched(algorithm):
  assert algorithm in meta.ALGORITHMS
  params, tasks = init_params(), make_tasks(num_tasks=2)
  config = meta.MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.1,
                           adapt=("^l2/w$", "^extra$"))
  inner = meta.init_inner(params, config=config)
  if config.learns_inner:
    assert sorted(traverse_util.flatten_dict(inner, sep="/")) == ["extra",
                                                                  "l2/w"]
  adapted = adapt_fn(config)(params, task(tasks, 0)["support"], inner)
  before = traverse_util.flatten_dict(params, sep="/")
  after = traverse_util.flatten_dict(adapted, sep="/")
  for p in ("l1/w", "l1/b", "l2/b"):
    np.testing.assert_array_equal(after[p], before[p])
  for p in ("l2/w", "extra"):
    assert np.abs(after[p] - before[p]).max() > 1e-6
  # The update direction has the meta-parameters' structure (traced only).
  _, grads = jax.eval_shape(meta_grad_fn(config),
                            {"model": params, "inner": inner}, tasks)
  assert jax.tree.structure(grads["model"]) == jax.tree.structure(params)
  assert jax.tree.structure(grads["inner"]) == jax.tree.structure(inner)


def test_msl_weights_are_rejected_where_they_mean_nothing():
  for algorithm in ("reptile", "pretrain"):
    with pytest.raises(ValueError, match="msl_weights"):
      meta.MetaConfig(algorithm=algorithm, inner_steps=2,
                      msl_weights=(0.5, 0.5))
  with pytest.raises(ValueError, match="meta.algorithm must be one of"):
    meta.MetaConfig(algorithm="protonet")



def test_parameters_sharing_a_path_are_refused():
  """`{"l1/w": x, "l1": {"w": y}}` flattens both leaves to 'l1/w': the
  adapted leaves, keyed by path, became one and both took its value."""
  params = init_params()
  params["l1/w"] = params["l1"]["w"] + 1.0
  one = task(make_tasks(), 0)
  with pytest.raises(ValueError, match="share the path 'l1/w'"):
    meta.adapt(lambda p, b: mlp_loss(p, b) + jnp.sum(p["l1/w"]), params,
               one["support"], config=meta.MetaConfig(inner_steps=1))


@pytest.mark.parametrize("algorithm", ["metasgd", "metric"])
def test_an_ensemble_refuses_inner_parameters_of_one_model(algorithm):
  """Meta-SGD's rates per element (and an encoder of one model's features)
  under `meta.Members` failed in a scan with "carry input and carry output
  must have equal types", or in the encoder's init."""
  params = jax.tree.map(lambda a: jnp.stack([a, a + 0.1]), init_params())
  members = meta.Members(mlp_loss, (".*",))
  tasks = make_tasks()
  config = meta.MetaConfig(algorithm=algorithm, inner_steps=1)
  with pytest.raises(ValueError, match="an ensemble .meta.Members. adapts"):
    inner = meta.init_inner(params, config=config, loss_fn=members,
                            support=task(tasks, 0)["support"])
    meta.meta_grad(members, {"model": params, "inner": inner}, tasks,
                   config=config)
