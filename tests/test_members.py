"""`model.members`: an ensemble of MeLUs stacked in one parameter pytree.

Each member must be exactly a one-member MeLU (its own slice of every
embedding table and of the decision MLP), fit and adapt on its own, and
the served prediction must be the members' mean.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import config_path, random_tasks, small_melu
from configs import default
from test_learners_export import ONE_STEP, check_export_and_serving
from metarec_jax import config_io, config_reference, meta, models
from metarec_jax.data.convert import synthetic
from metarec_jax.errors import InputError
from metarec_jax.train import train_and_evaluate

SPEC = synthetic.SyntheticSpec(num_users=50, num_items=40, min_ratings=20,
                               max_ratings=30, director_vocab=10,
                               actor_vocab=12, zip_vocab=8)
FIELDS = tuple(SPEC.features())
MEMBERS = 3
STACKED = ("embed", "decision")  # the subtrees with a member axis


def build(members, **keys):
  return models.build(small_melu(members=members, **keys), FIELDS,
                      rating_mean=3.5)


def member(params, k):
  """Member `k` of an ensemble's parameters, as a one-member MeLU's."""
  return {name: (jax.tree.map(lambda x: x[k], tree) if name in STACKED
                 else tree) for name, tree in params.items()}


def f64(tree):
  return jax.tree.map(lambda x: x.astype(jnp.float64)
                      if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def test_members_stack_every_embedding_and_layer_under_the_same_paths():
  one = build(1).init(jax.random.PRNGKey(0))
  many = build(MEMBERS).init(jax.random.PRNGKey(0))
  for name in STACKED:
    for a, b in zip(jax.tree.leaves(one[name]), jax.tree.leaves(many[name])):
      assert b.shape == (MEMBERS,) + a.shape
  # Drawn apart, and every member's output starts at the rating mean.
  table = many["embed"]["genre"]["embedding"]
  assert not np.allclose(table[0], table[1])
  np.testing.assert_allclose(many["decision"]["out"]["bias"], 3.5)


@pytest.mark.parametrize("rank_weight", [0.0, 2.0])
def test_prediction_is_the_members_mean_and_the_loss_their_sum(rank_weight):
  model, single = (build(MEMBERS, support_rank_weight=rank_weight),
                   build(1, support_rank_weight=rank_weight))
  params = model.init(jax.random.PRNGKey(1))
  batch = jax.tree.map(lambda x: x[0], random_tasks(FIELDS)["support"])
  each = [single.predict_unmapped(member(params, k), batch["features"])
          for k in range(MEMBERS)]
  np.testing.assert_allclose(
      model.predict_unmapped(params, batch["features"]),
      np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
  losses = [float(single.loss_fn(member(params, k), batch))
            for k in range(MEMBERS)]
  assert float(model.loss_fn(params, batch)) == pytest.approx(sum(losses),
                                                              rel=1e-5)


def test_each_member_adapts_as_it_would_alone():
  """The inner loop moves every member exactly as it moves a one-member
  MeLU with that member's parameters."""
  model, single = build(MEMBERS), build(1)
  params = model.init(jax.random.PRNGKey(2))
  support = jax.tree.map(lambda x: x[0], random_tasks(FIELDS)["support"])
  config = meta.MetaConfig(inner_steps=3, inner_lr=0.1, adapt=model.adapt)
  adapted = meta.adapt(model.loss_fn, params, support, config=config)
  for k in range(MEMBERS):
    alone = meta.adapt(single.loss_fn, member(params, k), support,
                       config=config)
    for a, b in zip(jax.tree.leaves(member(adapted, k)),
                    jax.tree.leaves(alone)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert not np.allclose(adapted["decision"]["out"]["kernel"],
                         params["decision"]["out"]["kernel"])


def test_meta_gradient_is_the_sum_of_the_members_own():
  """Second-order meta-gradient of the ensemble, in float64: member k's
  slice is the meta-gradient of member k alone (computed without the dual
  form, so the check also covers the dual form under the member vmap)."""
  jax.config.update("jax_enable_x64", True)
  try:
    model, single = (build(MEMBERS, support_rank_weight=1.0),
                     build(1, support_rank_weight=1.0))
    params = f64(model.init(jax.random.PRNGKey(3)))
    tasks = random_tasks(FIELDS)
    config = meta.MetaConfig(inner_steps=2, inner_lr=0.05,
                             adapt=model.adapt)

    def grad(loss_fn, p, cfg=config):
      return jax.jit(lambda mp: meta.meta_grad(loss_fn, mp, tasks,
                                               config=cfg))(
                                                   {"model": p, "inner": None})

    loss, grads = grad(model.loss_fn, params)
    total = 0.0
    for k in range(MEMBERS):
      # Each member alone by the plain inner loop (the ensemble's members
      # run the dual form).
      loss_k, grads_k = grad(single.loss_fn, member(params, k),
                             config.replace(dual_form=False))
      total += float(loss_k)
      for name in STACKED:
        for a, b in zip(jax.tree.leaves(grads_k["model"][name]),
                        jax.tree.leaves(member(grads["model"], k)[name])):
          np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-11)
    assert float(loss) == pytest.approx(total, rel=1e-10)
  finally:
    jax.config.update("jax_enable_x64", False)


def test_members_are_refused_where_they_do_not_apply():
  config = default.get_config()
  config.model.members = 3
  with pytest.raises(InputError, match="model.members > 1 is an ensemble"):
    config_reference.validate(config)  # the default is anchored
  config.model.anchor = False
  config_reference.validate(config)
  for algorithm in ("metric", "metasgd"):
    config.meta.algorithm = algorithm
    with pytest.raises(InputError, match="encoding algorithms"):
      config_reference.validate(config)
  config.meta.algorithm = "maml"
  config.model.name = "idemb"
  # Not "set model.anchor=false", which it is: the model is the problem.
  with pytest.raises(InputError, match="set model.name=melu"):
    config_reference.validate(config)


def test_an_adapted_leaf_the_members_share_is_refused_in_one_line():
  # Each member would adapt its own copy of the shared "b": task_loss
  # trained on that, then adapt died in an opaque vmap error.
  def loss_fn(p, b):
    return jnp.mean(b["mask"] * (b["x"] * p["w"] + p["b"] - b["y"]) ** 2)
  params = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}
  members = meta.Members(loss_fn, ("w",))
  support = {"x": jnp.array([1.0, 2.0]), "y": jnp.array([1.0, 0.0]),
             "mask": jnp.ones(2)}
  task = {"support": support, "query": support}
  config = meta.MetaConfig(inner_steps=1, inner_lr=0.1)
  for call in (lambda: meta.adapt(members, params, support, config=config),
               lambda: meta.task_loss(members, params, task, config=config)):
    with pytest.raises(ValueError, match="adapts 'b', shared by the members"):
      call()
  # Adapting only the stacked leaf is what an ensemble does.
  config = meta.MetaConfig(inner_steps=1, inner_lr=0.1, adapt=("w",))
  adapted = meta.adapt(members, params, support, config=config)
  assert adapted["b"] == params["b"] and adapted["w"].shape == (2,)


def test_train_refuses_adapting_a_shared_leaf_before_compiling(tmp_path):
  # MeLU's members share the median map: adapting it was a 55-line
  # traceback from inside the first step's trace, exit 1.
  from cli_run import assert_one_line_error, metarec_here  # pylint: disable=g-import-not-at-top
  out = metarec_here(
      "train", f"--config={config_path('tiny')}", f"--workdir={tmp_path}/w",
      "--config.model.members=3", "--config.model.anchor=false",
      "--config.meta.adapt=('^decision/','median_offsets')")
  assert_one_line_error(out, "meta.adapt adapts 'median_offsets', shared by"
                        " the members")


def test_members_of_an_implicit_model_need_no_anchor_flag():
  """Implicit models are never anchored (`models.factory.for_data`): an
  implicit ensemble was refused for `model.anchor`, the default's true."""
  config = default.get_config()
  config.model.members = 3
  config.model.loss = "bce"
  config.data.implicit.enabled = True
  assert config.model.anchor
  config_reference.validate(config)


def test_each_member_is_clipped_on_its_own():
  """One member's large gradient leaves another member's step alone (a
  global norm would shrink both); shared leaves take the smallest scale."""
  from metarec_jax.workdir import optim  # pylint: disable=g-import-not-at-top
  grads = {"model": {"decision": {"kernel": jnp.array([[3.0, 4.0],
                                                       [0.3, 0.4]])},
                     "shared": jnp.array([0.0])},
           "inner": None}
  clip = optim.clip_by_member_norm(1.0, ("^decision/",))
  out, _ = clip.update(grads, clip.init(grads))
  np.testing.assert_allclose(out["model"]["decision"]["kernel"],
                             [[0.6, 0.8], [0.3, 0.4]], rtol=1e-6)
  glob = optax.clip_by_global_norm(1.0)
  shrunk, _ = glob.update(grads, glob.init(grads))
  assert float(shrunk["model"]["decision"]["kernel"][1, 0]) < 0.1
  grads["model"]["shared"] = jnp.array([1.0])
  out, _ = clip.update(grads, clip.init(grads))
  # Member 0's norm is sqrt(25 + 1): the shared leaf takes its factor.
  np.testing.assert_allclose(out["model"]["shared"], [1 / np.sqrt(26)],
                             rtol=1e-6)


def test_an_ensemble_trains_exports_and_serves(tmp_path):
  """One meta-step of a two-member ensemble, then export and serving:
  `load(...)` predicts and adapts exactly as the core's own adaptation,
  and the checkpoint keeps the member axis."""
  config = config_io.load_config_file(config_path("tiny"))
  config_io.apply_overrides(config, ONE_STEP + [
      ("model.name", "melu"), ("model.anchor", "false"),
      ("model.members", "2")])
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)
  meta_params = check_export_and_serving(workdir, tmp_path, encoder=False)
  assert meta_params["model"]["decision"]["out"]["kernel"].shape[0] == 2


@pytest.mark.parametrize("algorithm", ["reptile", "mamlpp"])
def test_other_algorithms_update_each_member_as_alone(algorithm):
  """Reptile's direction and MAML++'s gradient (its per-step rates shared
  by the members) are, on member k's slice, member k's own."""
  model, single = build(MEMBERS), build(1)
  params = model.init(jax.random.PRNGKey(4))
  tasks = jax.tree.map(lambda x: x.astype(np.float32)
                       if x.dtype == np.float64 else x, random_tasks(FIELDS))
  config = meta.MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.1,
                           adapt=model.adapt)
  inner = meta.init_inner(member(params, 0), config=config)

  def grad(loss_fn):  # jitted: op by op it took twice as long
    return jax.jit(lambda mp: meta.meta_grad(loss_fn, mp, tasks,
                                             config=config))

  _, grads = grad(model.loss_fn)({"model": params, "inner": inner})
  alone_grad = grad(single.loss_fn)
  for k in range(MEMBERS):
    _, alone = alone_grad({"model": member(params, k), "inner": inner})
    for name in STACKED:
      for a, b in zip(jax.tree.leaves(alone["model"][name]),
                      jax.tree.leaves(member(grads["model"], k)[name])):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-6)
