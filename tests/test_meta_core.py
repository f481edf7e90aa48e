"""The functional core: exact meta-gradients, vmap, padding, partial adaptation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from metarec_jax import meta


@pytest.fixture(autouse=True)
def float64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def mlp_loss(params, batch):
  """A small smooth MLP regression loss with a row mask (like the models')."""
  h = jnp.tanh(batch["x"] @ params["l1"]["w"] + params["l1"]["b"])
  pred = (h @ params["l2"]["w"] + params["l2"]["b"])[..., 0]
  m = batch["mask"].astype(pred.dtype)
  return jnp.sum(m * (pred - batch["y"]) ** 2) / jnp.maximum(jnp.sum(m), 1.0)


def init_params(seed=0, d=3, h=4):
  r = np.random.default_rng(seed)
  return {"l1": {"w": jnp.asarray(r.normal(size=(d, h))),
                 "b": jnp.asarray(r.normal(size=h) * 0.1)},
          "l2": {"w": jnp.asarray(r.normal(size=(h, 1))),
                 "b": jnp.asarray([0.2])}}


def make_tasks(num_tasks=3, n_support=5, n_query=4, d=3, seed=1, pad=0):
  r = np.random.default_rng(seed)
  junk = np.random.default_rng(seed + 100)  # padding rows: garbage values

  def rows(n):
    x = r.normal(size=(num_tasks, n, d))
    y = r.normal(size=(num_tasks, n))
    mask = np.ones((num_tasks, n), bool)
    if pad:
      x = np.concatenate([x, junk.normal(size=(num_tasks, pad, d))], 1)
      y = np.concatenate([y, junk.normal(size=(num_tasks, pad))], 1)
      mask = np.concatenate([mask, np.zeros((num_tasks, pad), bool)], 1)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y), "mask": jnp.asarray(mask)}

  return {"support": rows(n_support), "query": rows(n_query)}


def central_differences(f, params, eps=1e-6):
  """Central differences of the scalar `f` along every parameter."""
  flat, unravel = ravel_pytree(params)
  f_flat = jax.jit(jax.vmap(lambda v: f(unravel(v))))
  steps = np.eye(len(flat)) * eps
  return np.asarray(f_flat(flat + steps) - f_flat(flat - steps)) / (2 * eps)


@pytest.mark.parametrize("adapt", [(), ("^l2/",)])
def test_second_order_meta_gradient_matches_finite_differences(adapt):
  params, tasks = init_params(), make_tasks()
  config = meta.MetaConfig(inner_steps=3, inner_lr=0.1, adapt=adapt)
  loss, grads = meta.meta_grad(mlp_loss, {"model": params, "inner": None},
                               tasks, config=config)
  reference = central_differences(
      lambda p: meta.meta_loss(mlp_loss, p, tasks, config=config),
      params)
  assert float(loss) == pytest.approx(
      float(meta.meta_loss(mlp_loss, params, tasks, config=config)))
  np.testing.assert_allclose(ravel_pytree(grads["model"])[0], reference,
                             rtol=1e-6, atol=1e-8)


def test_first_order_meta_gradient_matches_finite_differences():
  """First-order MAML: the query-loss gradient at the adapted parameters."""
  params, tasks = init_params(), make_tasks()
  config = meta.MetaConfig(inner_steps=2, inner_lr=0.1, second_order=False)
  _, grads = meta.meta_grad(mlp_loss, {"model": params, "inner": None}, tasks,
                            config=config)
  reference = 0.0
  num_tasks = tasks["query"]["x"].shape[0]
  for t in range(num_tasks):
    task = jax.tree.map(lambda a, t=t: a[t], tasks)
    adapted = meta.adapt(mlp_loss, params, task["support"], config=config)
    reference = reference + central_differences(
        lambda p, task=task: mlp_loss(p, task["query"]), adapted)
  np.testing.assert_allclose(ravel_pytree(grads["model"])[0],
                             reference / num_tasks, rtol=1e-6, atol=1e-8)
  # ... and it differs from the exact second-order gradient.
  exact = meta.MetaConfig(inner_steps=2, inner_lr=0.1)
  _, exact_grads = meta.meta_grad(mlp_loss, {"model": params, "inner": None},
                                  tasks, config=exact)
  assert np.abs(ravel_pytree(exact_grads["model"])[0]
                - ravel_pytree(grads["model"])[0]).max() > 1e-4


def test_fomaml_is_maml_without_second_order():
  config = meta.MetaConfig(algorithm="fomaml", inner_steps=2)
  assert config.algorithm == "maml" and not config.second_order


def test_vmapped_meta_loss_equals_python_loop():
  params, tasks = init_params(), make_tasks(num_tasks=5)
  config = meta.MetaConfig(inner_steps=2, inner_lr=0.05)
  vmapped = meta.meta_loss(mlp_loss, params, tasks, config=config)
  vmapped_grad = jax.grad(lambda p: meta.meta_loss(mlp_loss, p, tasks,
                                                   config=config))(params)
  one = jax.jit(jax.value_and_grad(
      lambda p, task: meta.task_loss(mlp_loss, p, task, config=config)))
  losses, grads = [], []
  for t in range(5):  # the Python loop over tasks, one task at a time
    loss, grad = one(params, jax.tree.map(lambda a, t=t: a[t], tasks))
    losses.append(float(loss))
    grads.append(grad)
  assert float(vmapped) == pytest.approx(np.mean(losses), rel=1e-12)
  looped_grad = jax.tree.map(lambda *g: sum(g) / 5, *grads)
  for a, b in zip(jax.tree.leaves(vmapped_grad), jax.tree.leaves(looped_grad)):
    np.testing.assert_allclose(a, b, rtol=1e-10)


@pytest.mark.parametrize("second_order", [True, False])
def test_padding_rows_change_neither_loss_nor_gradient(second_order):
  params = init_params()
  plain, padded = make_tasks(seed=3), make_tasks(seed=3, pad=6)
  config = meta.MetaConfig(inner_steps=3, inner_lr=0.1,
                           second_order=second_order)
  mp = {"model": params, "inner": None}
  l1, g1 = meta.meta_grad(mlp_loss, mp, plain, config=config)
  l2, g2 = meta.meta_grad(mlp_loss, mp, padded, config=config)
  assert float(l1) == pytest.approx(float(l2), rel=1e-12)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_empty_support_adapts_to_start_and_stays_finite():
  params = init_params()
  tasks = make_tasks(num_tasks=2)
  tasks["support"]["mask"] = jnp.zeros_like(tasks["support"]["mask"])
  config = meta.MetaConfig(inner_steps=3, inner_lr=0.1)
  task0 = jax.tree.map(lambda a: a[0], tasks)
  adapted = meta.adapt(mlp_loss, params, task0["support"], config=config)
  for a, b in zip(jax.tree.leaves(adapted), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  loss, grads = meta.meta_grad(mlp_loss, {"model": params, "inner": None},
                               tasks, config=config)
  assert np.isfinite(float(loss))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # With no support the meta-loss is the plain query loss.
  plain = np.mean([float(mlp_loss(params, jax.tree.map(
      lambda a, t=t: a[t], tasks["query"]))) for t in range(2)])
  assert float(loss) == pytest.approx(plain)


def test_partial_adaptation_leaves_other_leaves_untouched():
  params, tasks = init_params(), make_tasks()
  config = meta.MetaConfig(inner_steps=2, inner_lr=0.1, adapt=("^l2/w$",))
  support = jax.tree.map(lambda a: a[0], tasks["support"])
  adapted = meta.adapt(mlp_loss, params, support, config=config)
  np.testing.assert_array_equal(adapted["l1"]["w"], params["l1"]["w"])
  np.testing.assert_array_equal(adapted["l1"]["b"], params["l1"]["b"])
  np.testing.assert_array_equal(adapted["l2"]["b"], params["l2"]["b"])
  assert np.abs(adapted["l2"]["w"] - params["l2"]["w"]).max() > 1e-6
  assert meta.adapt_mask(params, config.adapt) == (False, False, False, True)


def test_adapt_pattern_matching_nothing_is_an_error():
  with pytest.raises(ValueError, match="matches no parameter"):
    meta.adapt_mask(init_params(), ("decoder",))


def test_remat_gives_the_same_meta_gradient():
  params, tasks = init_params(), make_tasks()
  mp = {"model": params, "inner": None}
  base = meta.MetaConfig(inner_steps=3, inner_lr=0.1)
  l1, g1 = meta.meta_grad(mlp_loss, mp, tasks, config=base)
  l2, g2 = meta.meta_grad(mlp_loss, mp, tasks, config=base.replace(remat=True))
  assert float(l1) == pytest.approx(float(l2), rel=1e-12)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-10)


@pytest.mark.parametrize("algorithm", ["maml", "mamlpp", "metasgd"])
def test_zero_inner_steps_is_the_plain_query_loss(algorithm):
  # MAML++ with 0 steps (an allowed meta.inner_steps) was an IndexError:
  # a scan of no steps traces its body, which indexed [0] per-step rates.
  params, tasks = init_params(), make_tasks()
  config = meta.MetaConfig(algorithm=algorithm, inner_steps=0)
  inner = meta.init_inner(params, config=config)
  loss = meta.meta_loss(mlp_loss, params, tasks, config=config, inner=inner)
  plain = jnp.mean(jax.vmap(lambda q: mlp_loss(params, q))(tasks["query"]))
  assert float(loss) == pytest.approx(float(plain))
  _, grads = meta.meta_grad(mlp_loss, {"model": params, "inner": inner},
                            tasks, config=config)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_replace_applies_another_algorithms_rule_to_what_was_asked():
  """An encoder's config has no inner steps and fomaml's is maml first
  order: derived with `replace(algorithm=...)`, a sweep trained MAML with
  no inner loop, or first order, silently."""
  metric = meta.MetaConfig(algorithm="metric", inner_steps=3)
  assert metric.inner_steps == 0
  assert metric.replace(algorithm="maml").inner_steps == 3
  fo = meta.MetaConfig(algorithm="fomaml", inner_steps=3)
  assert not fo.second_order and fo.replace(algorithm="maml").second_order
  assert not fo.replace(remat=True).second_order  # still fomaml
  assert fo.replace(remat=True) == fo.replace(remat=True).replace()


def test_an_integer_parameter_is_named_where_the_core_would_differentiate_it():
  """JAX's "grad requires real- or complex-valued inputs ... got int32"
  named no leaf, and `meta_grad` of bare params failed with KeyError."""
  params = {"w": jnp.ones((3, 2)), "count": jnp.int32(3)}

  def loss(p, batch):
    return jnp.mean((batch["x"] @ p["w"]).sum(-1) - batch["y"]) ** 2

  batch = {"x": jnp.ones((4, 3)), "y": jnp.ones(4)}
  tasks = jax.tree.map(lambda a: jnp.stack([a, a]),
                       {"support": batch, "query": batch})
  frozen = meta.MetaConfig(adapt=("w",))
  meta.adapt(loss, params, batch, config=frozen)  # not adapted: fine
  with pytest.raises(ValueError, match="adapted parameter 'count' is int32"):
    meta.adapt(loss, params, batch, config=meta.MetaConfig())
  for config in (frozen, frozen.replace(algorithm="reptile"),
                 frozen.replace(algorithm="pretrain")):
    with pytest.raises(ValueError, match="parameter 'count' is int32"):
      meta.meta_grad(loss, {"model": params, "inner": None}, tasks,
                     config=config)
  with pytest.raises(ValueError, match="meta_grad takes meta_params"):
    meta.meta_grad(loss, params, tasks, config=frozen)


@pytest.mark.parametrize("keys, message", [
    ({"inner_steps": 2.5}, "meta.inner_steps must be a whole number"),
    ({"inner_steps": "3"}, "meta.inner_steps must be a whole number"),
    ({"inner_lr": "0.1"}, "meta.inner_lr must be a finite number"),
    ({"inner_lr": float("nan")}, "meta.inner_lr must be a finite number"),
    ({"algorithm": "amortised", "encoder_hidden": 0},
     "meta.encoder_hidden must be >= 1"),
    ({"adapt": ("[",)}, "meta.adapt: '\\[' is not a regular expression"),
])
def test_a_meta_config_of_bad_values_is_refused_when_made(keys, message):
  """They failed at the first traced call, deep in JAX or flax (a
  TypeError of the scan, a ZeroDivisionError of an initializer)."""
  with pytest.raises(ValueError, match=message):
    meta.MetaConfig(**keys)


def test_a_meta_config_keeps_whole_numbers_and_no_adapt():
  assert meta.MetaConfig(inner_steps=2.0).inner_steps == 2
  assert meta.MetaConfig(inner_steps=np.int64(3)).inner_steps == 3
  assert meta.MetaConfig(adapt=None).adapt == ()


def test_every_meta_key_reaches_the_meta_config():
  """`meta.*` keys that name a `MetaConfig` field reach it with no edit of
  `experiment.meta_config` (helper N: a new key in the three config places
  only was accepted, validated, saved and documented, and did nothing);
  the others are named in `META_KEYS_OUTSIDE`."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from metarec_jax import config_defaults, experiment  # pylint: disable=g-import-not-at-top
  config = config_defaults.get_config()
  fields = {f.name for f in dataclasses.fields(meta.MetaConfig)}
  keys = set(config.meta.keys())
  assert keys - fields == experiment.META_KEYS_OUTSIDE
  model = types.SimpleNamespace(adapt=("^decision/",),  # its default
                                meta_fixed=(), always_adapt=())
  with config.unlocked():
    config.meta.momentum = 0.5  # a field no key sets (yet)
    config.meta.encoder_hidden = 7
    config.meta.inner_optimizer = "momentum"
  made = experiment.meta_config(config, model, inner_rate=0.2)
  assert (made.momentum, made.encoder_hidden, made.inner_optimizer,
          made.inner_lr, made.adapt) == (0.5, 7, "momentum", 0.2,
                                         ("^decision/",))


def test_inner_adam_in_a_dtype_where_its_eps_is_zero_is_refused():
  """float16: eps 1e-8 and eps_root 1e-16 round to 0, and every zero
  gradient coordinate (an empty support set's all) became NaN."""
  params = {"w": jnp.ones((3, 2), jnp.float16)}

  def loss(p, batch):
    return jnp.mean((batch["x"] @ p["w"]).sum(-1) - batch["y"]) ** 2

  batch = {"x": jnp.zeros((4, 3), jnp.float16), "y": jnp.ones(4, jnp.float16)}
  adam = meta.MetaConfig(inner_optimizer="adam")
  for run in (meta.adapt, jax.jit(meta.adapt, static_argnums=0,
                                  static_argnames="config")):
    with pytest.raises(ValueError, match="adapted parameter 'w'"):
      run(loss, params, batch, config=adam)
  for fine in (adam.replace(adam_eps=1e-3, adam_eps_root=1e-6),
               meta.MetaConfig(inner_optimizer="sgd")):
    out = meta.adapt(loss, params, batch, config=fine)
    assert bool(jnp.all(jnp.isfinite(out["w"])))
  bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  assert bool(jnp.all(jnp.isfinite(jax.jit(meta.adapt, static_argnums=0,
                                            static_argnames="config")(
      loss, bf16, batch, config=adam)["w"])))
