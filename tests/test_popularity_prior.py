"""MeLU's popularity prior on implicit feedback (`model.popularity_prior`):
when it is on, that a fresh model ranks by popularity exactly, and that the
dual-form loss carries it like the plain one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import model_section, random_tasks, small_melu, synthetic_store
from test_members import member
from metarec_jax import meta, models
from metarec_jax.data.convert import synthetic
from metarec_jax.data.schema import ITEM_ID
from metarec_jax.data.tasks import FeatureTables
from metarec_jax.models.melu import PRIOR_PSEUDO, popularity_table

SPEC = synthetic.SyntheticSpec(num_users=200, num_items=50, min_ratings=20,
                               max_ratings=30, director_vocab=20,
                               actor_vocab=30, zip_vocab=20)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  return synthetic_store(tmp_path_factory, "prior", SPEC)


def prior_config(**kw):
  return small_melu(**{"loss": "bce", "popularity_prior": True, **kw})


def built(store, config, counts=None):
  config = models.for_data(config, implicit_data=True)
  tables = FeatureTables.from_store(
      store, models.feature_names(config, store.features),
      item_id=models.needs_item_id(config))
  return models.build(config, tables.specs, item_counts=counts), tables


def test_the_prior_is_on_only_for_melu_with_a_ranking_loss_on_implicit():
  on = prior_config()
  assert models.for_data(on, implicit_data=True).popularity_prior
  assert not models.for_data(on, implicit_data=False).popularity_prior
  for off in (prior_config(loss="mse"), prior_config(name="idemb")):
    assert not models.for_data(off, implicit_data=True).popularity_prior
  # A config written before the key: no prior (it loads as it ran).
  assert not model_section({"name": "melu", "loss": "bce"}).popularity_prior
  assert models.needs_item_id(models.for_data(on, implicit_data=True))


def test_a_fresh_model_scores_each_item_by_its_popularity(store):
  counts = np.random.default_rng(0).integers(0, 40, store.num_items)
  counts[:5] = 0  # items without training positives (new items)
  counts[5] = 1
  model, _ = built(store, prior_config(), counts)
  params = model.init(jax.random.PRNGKey(0))
  # The prior reads the item ID; the network does not embed it unless
  # asked (model.item_id).
  assert ITEM_ID not in [f.name for f in model.module.fields]
  n, total = store.num_items, counts.sum()
  weight = counts / (counts + PRIOR_PSEUDO)
  none = np.log(n / (total + n))  # the level of an item without positives
  expected = (weight * np.log((counts + 1.0) * n / (total + n))
              + (1 - weight) * none)
  np.testing.assert_allclose(np.asarray(params["popularity"])[1:, 0],
                             expected, rtol=1e-6)
  feats = {k: jnp.zeros((n,) + v.shape[1:], v.dtype) + 1
           for k, v in model.example_features.items()}  # real rows
  feats[ITEM_ID] = jnp.arange(1, n + 1)
  score = np.asarray(model.predict(params, feats))
  np.testing.assert_allclose(score, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(score[:5], none, rtol=1e-6)  # until learned
  # The score rises with the count: pulled towards an average item's 0,
  # an item with one positive scored below every item without any.
  by_count = score[np.argsort(counts, kind="stable")]
  assert np.all(np.diff(by_count) >= -1e-6)
  assert score[counts == 1].min() > score[counts == 0].max()
  # Learned, the features' prediction scores the items without positives
  # and weighs 1 - w in the others.
  project = params["popularity_project"]["kernel"]
  learned = {**params, "popularity_project": {"kernel": project + 0.5}}
  moved = np.asarray(model.predict(learned, feats)) - score
  assert np.all(moved[:5] != 0.0)
  np.testing.assert_allclose(moved[5:] / (1 - weight[5:]),
                             np.full(n - 5, moved[0]), rtol=1e-4)
  # Without counts (an export rebuilds the model; its parameters carry the
  # table): a flat prior of the right shape.
  assert popularity_table(None, n + 1).shape == (n + 1, 2)


@pytest.mark.parametrize("second_order", [True, False])
def test_the_dual_form_loss_carries_the_prior_like_the_plain_one(
    store, second_order):
  jax.config.update("jax_enable_x64", True)
  try:
    counts = np.random.default_rng(1).integers(0, 40, store.num_items)
    model, tables = built(store, prior_config(), counts)
    params = jax.tree.map(lambda x: x.astype(jnp.float64),
                          model.init(jax.random.PRNGKey(0)))
    # Train the network off zero so that both parts matter.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree.unflatten(tree, [
        x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
        if x.ndim == 2 else x for x, k in zip(leaves, keys)])
    tasks = random_tasks(tables.specs)
    for part in tasks.values():
      part["rating"] = (part["rating"] > 3).astype(np.float64)
      part["features"][ITEM_ID] = part["features"][ITEM_ID] % (
          store.num_items + 1)
    config = meta.MetaConfig(inner_steps=2, inner_lr=0.1,
                             second_order=second_order, adapt=model.adapt)
    mp = {"model": params, "inner": None}
    loss, grads = jax.jit(lambda mp, t: meta.meta_grad(
        model.loss_fn, mp, t, config=config))(mp, tasks)
    plain = models.plain_loss(model.module, "bce")

    def by_hand(p):
      def one(task):
        adapted = meta.adapt(plain, p, task["support"],
                             config=config.replace(dual_form=False))
        return plain(adapted, task["query"])
      return jnp.mean(jax.vmap(one)(tasks))

    if second_order:
      ref_loss, ref = jax.jit(jax.value_and_grad(by_hand))(params)
      for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(grads["model"])):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-11)
    else:
      ref_loss = by_hand(params)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-10)
    # The table is fixed; the weight learns.
    assert not np.any(np.asarray(grads["model"]["popularity"]))
    assert float(grads["model"]["popularity_weight"]) != 0.0
    assert np.any(np.asarray(grads["model"]["popularity_project"]["kernel"]))
  finally:
    jax.config.update("jax_enable_x64", False)


def test_an_ensemble_shares_the_prior_and_sums_its_gradient(store):
  """`model.members` with the prior: the prior's parameters are shared by
  the members (no member axis), each member's loss and gradient on its
  slice are its own, and the shared parameters' gradient is the sum of
  the members' gradients."""
  counts = np.random.default_rng(1).integers(0, 40, store.num_items)
  model, tables = built(store, prior_config(members=2), counts)
  single, _ = built(store, prior_config(), counts)
  params = model.init(jax.random.PRNGKey(0))
  assert params["popularity_weight"].shape == ()
  assert params["decision"]["out"]["kernel"].shape[0] == 2
  tasks = jax.tree.map(
      lambda x: x.astype(np.float32) if x.dtype == np.float64 else x,
      random_tasks(tables.specs))
  for part in tasks.values():
    part["rating"] = (part["rating"] > 3).astype(np.float32)
    part["features"][ITEM_ID] = part["features"][ITEM_ID] % (
        store.num_items + 1)
  config = meta.MetaConfig(inner_steps=2, inner_lr=0.1, adapt=model.adapt)

  def grad(m):  # jitted: op by op it took 20 s
    return jax.jit(lambda p: meta.meta_grad(
        m.loss_fn, {"model": p, "inner": None}, tasks, config=config))

  loss, grads = grad(model)(params)
  single_grad = grad(single)
  parts = [single_grad(member(params, k)) for k in range(2)]
  assert float(loss) == pytest.approx(sum(float(l) for l, _ in parts),
                                      rel=1e-5)
  for k, (_, g) in enumerate(parts):
    np.testing.assert_allclose(grads["model"]["decision"]["out"]["kernel"][k],
                               g["model"]["decision"]["out"]["kernel"],
                               rtol=1e-4, atol=1e-6)
  for name in ("popularity_weight", "popularity_project"):
    for a, b, c in zip(jax.tree.leaves(grads["model"][name]),
                       jax.tree.leaves(parts[0][1]["model"][name]),
                       jax.tree.leaves(parts[1][1]["model"][name])):
      np.testing.assert_allclose(a, b + c, rtol=1e-4, atol=1e-6)
