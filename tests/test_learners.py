"""The encoding learners (`metric`, `amortised`, `hybrid`): exact
meta-gradients in float64, vmap against the loop, padding, empty support sets, both
models, and distillation's blended targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from conftest import model_section, random_tasks
from metarec_jax import meta, models
from metarec_jax.data.schema import FeatureSpec
from metarec_jax.train import distill

LEARNERS = ("metric", "amortised", "hybrid")


@pytest.fixture
def float64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def featurize(params, batch):
  return jnp.tanh(batch["x"] @ params["feat"])


def head(params, a, batch):
  h = jnp.tanh(a)
  pred = (h @ params["head"]["w2"] + params["head"]["b2"])[..., 0]
  m = batch["mask"].astype(pred.dtype)
  return jnp.sum(m * (pred - batch["y"]) ** 2) / jnp.maximum(jnp.sum(m), 1.0)


def rows(params, batch):
  return featurize(params, batch), batch["y"], batch["mask"]


def plain_loss(params, batch):
  return head(params, featurize(params, batch) @ params["head"]["w1"]
              + params["head"]["b1"], batch)


plain_loss.rows = rows
LINEAR_HEAD = meta.LinearHead(featurize=featurize, head=head,
                              kernel="head/w1", bias="head/b1",
                              featurize_reads=("^feat",), rows=rows)


def toy(seed=0, d=3, e=4, h=5, tasks=3, n=6, q=4, empty=()):
  r = np.random.default_rng(seed)
  params = {"feat": jnp.asarray(r.normal(size=(d, e))),
            "head": {"w1": jnp.asarray(r.normal(size=(e, h)) * 0.5),
                     "b1": jnp.asarray(r.normal(size=h) * 0.1),
                     "w2": jnp.asarray(r.normal(size=(h, 1))),
                     "b2": jnp.asarray([0.1])}}

  def part(n, masked):
    mask = r.random((tasks, n)) < 0.8
    mask[:, 0] = True
    for t in masked:
      mask[t] = False
    return {"x": jnp.asarray(r.normal(size=(tasks, n, d))),
            "y": jnp.asarray(r.normal(size=(tasks, n))),
            "mask": jnp.asarray(mask)}

  return params, {"support": part(n, empty), "query": part(q, ())}


def setup(algorithm, loss_fn, params, tasks, seed=1, **kw):
  config = meta.MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.3,
                           adapt=("^head/",), encoder_hidden=6, **kw)
  support = jax.tree.map(lambda a: a[0], tasks["support"])
  inner = meta.init_inner(params, config=config, loss_fn=loss_fn,
                          support=support, rng=jax.random.PRNGKey(seed))
  # Move the zero-initialised output layers off zero, so every encoder
  # parameter has a gradient to check.
  flat, unravel = ravel_pytree(inner)
  noise = np.random.default_rng(seed).normal(size=flat.shape) * 0.2
  return config, unravel(flat + noise)


@pytest.mark.parametrize("loss_fn", [plain_loss, LINEAR_HEAD],
                         ids=["plain", "linear_head"])
@pytest.mark.parametrize("algorithm", LEARNERS)
def test_meta_gradient_matches_finite_differences(float64, algorithm, loss_fn):
  params, tasks = toy(empty=(1,))
  config, inner = setup(algorithm, loss_fn, params, tasks)
  mp = {"model": params, "inner": inner}
  flat, unravel = ravel_pytree(mp)

  def objective(v):
    p = unravel(v)
    return meta.meta_loss(loss_fn, p["model"], tasks, config=config,
                          inner=p["inner"])

  loss, grads = meta.meta_grad(loss_fn, mp, tasks, config=config)
  np.testing.assert_allclose(loss, objective(flat), rtol=1e-12)
  g = ravel_pytree(grads)[0]
  r = np.random.default_rng(0)
  for _ in range(3):
    v = r.normal(size=flat.shape)
    eps = 1e-6
    fd = (objective(flat + eps * v) - objective(flat - eps * v)) / (2 * eps)
    np.testing.assert_allclose(g @ v, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("algorithm", LEARNERS)
def test_the_linear_heads_shortcuts_equal_the_plain_computation(float64,
                                                                algorithm):
  # hybrid: the dual form; metric, amortised: the first layer's modulation
  # on the pre-activations of one shared kernel (`task_loss_shared`).
  params, tasks = toy(empty=(1,))
  config, inner = setup(algorithm, LINEAR_HEAD, params, tasks)
  mp = {"model": params, "inner": inner}
  dual = meta.meta_grad(LINEAR_HEAD, mp, tasks, config=config)
  plain = meta.meta_grad(plain_loss, mp, tasks, config=config)
  for a, b in zip(jax.tree.leaves(dual), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algorithm", LEARNERS)
def test_vmapped_tasks_equal_the_loop_over_tasks(float64, algorithm):
  params, tasks = toy(tasks=4)
  config, inner = setup(algorithm, LINEAR_HEAD, params, tasks)
  losses = [meta.task_loss(LINEAR_HEAD, params,
                           jax.tree.map(lambda a, t=t: a[t], tasks),
                           config=config, inner=inner) for t in range(4)]
  np.testing.assert_allclose(
      meta.meta_loss(LINEAR_HEAD, params, tasks, config=config, inner=inner),
      np.mean(losses), rtol=1e-12)
  vmapped = jax.vmap(lambda s: meta.adapt(
      LINEAR_HEAD, params, s, config=config, inner=inner))(tasks["support"])
  for t in range(4):
    one = meta.adapt(LINEAR_HEAD, params,
                     jax.tree.map(lambda a, t=t: a[t], tasks["support"]),
                     config=config, inner=inner)
    for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(one)):
      np.testing.assert_allclose(a[t], b, rtol=1e-12)


def padded(tasks, extra=5, seed=7):
  """`tasks` with `extra` more rows of garbage values, masked out, in
  every support and query set (a larger pad of the same tasks)."""
  r = np.random.default_rng(seed)

  def part(p):
    t, _, d = p["x"].shape
    return {"x": jnp.concatenate([p["x"], r.normal(size=(t, extra, d)) * 50],
                                 1),
            "y": jnp.concatenate([p["y"], r.normal(size=(t, extra)) * 50], 1),
            "mask": jnp.concatenate([p["mask"], jnp.zeros((t, extra), bool)],
                                    1)}

  return {k: part(v) for k, v in tasks.items()}


@pytest.mark.parametrize("loss_fn", [plain_loss, LINEAR_HEAD],
                         ids=["plain", "linear_head"])
@pytest.mark.parametrize("algorithm",
                         LEARNERS + ("maml", "metasgd", "mamlpp", "reptile"))
def test_padding_rows_change_neither_loss_nor_gradient(float64, algorithm,
                                                        loss_fn):
  """The batch pads tasks to fixed sizes: rows beyond a task's own, of any
  value, must not move its loss or meta-gradient (the core's test covers
  MAML on a plain loss; here every learner, both loss forms)."""
  params, tasks = toy(empty=(1,))
  kw = {"msl_weights": (0.3, 0.7)} if algorithm == "mamlpp" else {}
  config, inner = setup(algorithm, loss_fn, params, tasks, **kw)
  mp = {"model": params, "inner": inner}
  want = meta.meta_grad(loss_fn, mp, tasks, config=config)
  got = meta.meta_grad(loss_fn, mp, padded(tasks), config=config)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("algorithm", LEARNERS)
def test_an_empty_support_set_gives_the_meta_parameters(float64, algorithm):
  params, tasks = toy(empty=(0, 2))
  config, inner = setup(algorithm, plain_loss, params, tasks)
  for t in (0, 2):
    support = jax.tree.map(lambda a, t=t: a[t], tasks["support"])
    adapted = meta.adapt(plain_loss, params, support, config=config,
                         inner=inner)
    for a, b in zip(jax.tree.leaves(adapted), jax.tree.leaves(params)):
      np.testing.assert_array_equal(a, b)
  loss, grads = meta.meta_grad(plain_loss, {"model": params, "inner": inner},
                               tasks, config=config)
  assert np.isfinite(loss)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # The adapting support set does change the parameters.
  support = jax.tree.map(lambda a: a[1], tasks["support"])
  adapted = meta.adapt(plain_loss, params, support, config=config,
                       inner=inner)
  assert not np.allclose(adapted["head"]["b1"], params["head"]["b1"])


def test_metric_and_amortised_take_no_gradient_steps():
  for algorithm in ("metric", "amortised"):
    config = meta.MetaConfig(algorithm=algorithm, inner_steps=5)
    assert config.inner_steps == 0 and config.learns_inner
  assert meta.MetaConfig(algorithm="hybrid", inner_steps=5).inner_steps == 5
  with pytest.raises(ValueError, match="loss_fn=, support="):
    meta.init_inner({"w": jnp.zeros(2)},
                    config=meta.MetaConfig(algorithm="metric"))


SPECS = (FeatureSpec("item_id", "item", "categorical", 30, 1),
         FeatureSpec("genre", "item", "list", 6, 3),
         FeatureSpec("age", "user", "categorical", 5, 1))


@pytest.mark.parametrize("name", ["melu", "idemb"])
@pytest.mark.parametrize("algorithm", LEARNERS)
def test_both_models_encode_their_support_rows(name, algorithm):
  """MeLU (a LinearHead) and IDEmb (a plain loss) offer `rows`; the encoder
  modulates exactly the adapted leaves; an empty task is the meta-params."""
  mc = model_section({"name": name, "embed_dim": 4, "hidden": (8,),
                      "features": ()})
  model = models.build(mc, SPECS, rating_mean=3.5)
  config = meta.MetaConfig(algorithm=algorithm, inner_steps=1,
                           adapt=model.adapt, encoder_hidden=8)
  params = model.init(jax.random.PRNGKey(0))
  inner = meta.init_inner(params, config=config, loss_fn=model.loss_fn,
                          support=model.example_batch())
  flat, unravel = ravel_pytree(inner)
  inner = unravel(flat + 0.1)
  tasks = random_tasks(SPECS, n_tasks=2, n_support=5, n_query=3)
  tasks["support"]["mask"][1] = False
  # Jitted: run op by op, the second-order terms compile hundreds of tiny
  # programs.
  adapted = jax.jit(jax.vmap(lambda s: meta.adapt(
      model.loss_fn, params, s, config=config, inner=inner)))(
          tasks["support"])
  part = meta.paths.partition(params, config.adapt)
  for path, leaf in zip(meta.leaf_paths(params), jax.tree.leaves(adapted)):
    base = dict(zip(part.paths, part.leaves))[path]
    np.testing.assert_array_equal(leaf[1], base)  # empty support
    if path not in part.adapted:
      np.testing.assert_array_equal(leaf[0], base)
  moved = [p for p, leaf in zip(meta.leaf_paths(params),
                                jax.tree.leaves(adapted))
           if not np.allclose(leaf[0], dict(zip(part.paths,
                                                part.leaves))[p])]
  assert moved and all(p in part.adapted for p in moved)
  loss, grads = jax.jit(lambda p, t: meta.meta_grad(
      model.loss_fn, p, t, config=config))(
          {"model": params, "inner": inner}, tasks)
  assert np.isfinite(loss)
  assert np.isfinite(ravel_pytree(grads)[0]).all()


def test_distillation_blends_the_teachers_adapted_predictions():
  """The query targets are (1 - w) rating + w * the teacher's prediction
  after the teacher's own adaptation, computed here with meta.adapt."""
  mc = model_section({"name": "melu", "embed_dim": 4, "hidden": (8,),
                      "features": ()})
  model = models.build(mc, SPECS, rating_mean=3.5)
  config = meta.MetaConfig(inner_steps=2, inner_lr=0.1, adapt=model.adapt)
  params = model.init(jax.random.PRNGKey(1))
  tasks = random_tasks(SPECS, n_tasks=3, n_support=5, n_query=4)
  for part in ("support", "query"):
    tasks[part]["rating"] = tasks[part]["rating"].astype(np.float32)
  out = distill.targets_fn(model, config, 0.25)(params, None, tasks)
  for t in range(3):
    task = jax.tree.map(lambda a, t=t: a[t], tasks)
    adapted = meta.adapt(model.loss_fn, params, task["support"],
                         config=config)
    teacher = model.predict(adapted, task["query"]["features"])
    np.testing.assert_allclose(
        out["query"]["rating"][t],
        0.75 * task["query"]["rating"] + 0.25 * teacher, rtol=1e-5)
  np.testing.assert_array_equal(out["support"]["rating"],
                                tasks["support"]["rating"])
