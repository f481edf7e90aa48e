"""MeLU's options: losses, a separate query loss, item IDs, feature choice."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import random_tasks, small_melu, synthetic_store
from metarec_jax import meta, models
from metarec_jax.data import splits
from metarec_jax.data.convert import synthetic
from metarec_jax.data.sampler import SamplerSpec, TrainSampler
from metarec_jax.data.schema import ITEM_ID
from metarec_jax.data.tasks import FeatureTables

SPEC = synthetic.SyntheticSpec(num_users=300, num_items=120, min_ratings=20,
                               max_ratings=40, director_vocab=30,
                               actor_vocab=40, zip_vocab=20)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  return synthetic_store(tmp_path_factory, "melu", SPEC)


def model_config(**kw):
  return small_melu(**kw)


def test_huber_loss_is_twice_optax_huber_and_mse_near_zero():
  pred = jnp.array([3.0, 3.05, 1.0, 4.0])
  batch = {"rating": jnp.array([4.0, 3.0, 1.0, 0.0]),
           "mask": jnp.array([True, True, True, False])}
  huber = models.masked_loss(pred, batch, "huber", 0.1)
  expected = 2 * optax.huber_loss(pred[:3] - batch["rating"][:3], delta=0.1)
  assert float(huber) == pytest.approx(float(expected.sum() / 3))
  small = {"rating": pred + 0.01, "mask": jnp.ones(4, bool)}
  assert float(models.masked_loss(pred, small, "huber", 0.1)) == pytest.approx(
      float(models.masked_loss(pred, small, "mse")))
  with pytest.raises(ValueError, match="a rating loss is one of mse, huber,"
                     " not 'mae'"):
    models.masked_loss(pred, batch, "mae")


@pytest.mark.parametrize("second_order,rank_weight", [
    (True, 0.0), (False, 0.0), (True, 2.0)])
def test_a_separate_query_loss_matches_its_plain_definition(second_order,
                                                            rank_weight):
  """The dual form scores the query with the query loss's head (another
  rating loss, with or without the listwise term) exactly as the plain
  formulation does, to the second-order meta-gradient."""
  jax.config.update("jax_enable_x64", True)
  try:
    fields = tuple(SPEC.features())
    model = models.build(model_config(query_loss="huber", huber_delta=0.3,
                                      query_rank_weight=rank_weight),
                         fields, rating_mean=3.5)
    assert model.query_loss_fn is not None
    params = jax.tree.map(lambda x: x.astype(jnp.float64),
                          model.init(jax.random.PRNGKey(0)))
    tasks = random_tasks(fields)
    config = meta.MetaConfig(inner_steps=2, inner_lr=0.05,
                             second_order=second_order, adapt=model.adapt)
    mp = {"model": params, "inner": None}
    # Dual form with the query head vs the plain formulation by hand.
    loss, grads = jax.jit(lambda mp, t: meta.meta_grad(
        model.loss_fn, mp, t, config=config,
        query_loss_fn=model.query_loss_fn))(mp, tasks)

    def by_hand(p):
      def one(task):
        adapted = meta.adapt(models.plain_loss(model.module), p,
                             task["support"],
                             config=config.replace(dual_form=False))
        return models.plain_loss(model.module, "huber", 0.3, rank_weight)(
            adapted, task["query"])
      return jnp.mean(jax.vmap(one)(tasks))

    ref_loss, ref = jax.jit(jax.value_and_grad(by_hand))(params)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-10)
    if second_order:
      for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(grads["model"])):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-11)
    # And it differs from scoring the query with the inner loss.
    plain_loss = jax.jit(lambda p, t: meta.meta_loss(
        model.loss_fn, p, t, config=config))(params, tasks)
    assert abs(float(plain_loss) - float(loss)) > 1e-3
  finally:
    jax.config.update("jax_enable_x64", False)


def test_item_id_embedding_starts_at_zero_and_hidden_ids_embed_to_zero(store):
  config = model_config(item_id=True, embed_std=0.1)
  tables = FeatureTables.from_store(
      store, models.feature_names(config, store.features),
      item_id=models.needs_item_id(config))
  model = models.build(config, tables.specs, rating_mean=3.5)
  params = model.init(jax.random.PRNGKey(0))
  table = params["embed"]["item_id"]["embedding"]
  assert table.shape == (store.num_items + 1, 4) and not np.any(table)
  assert 0.05 < float(np.std(params["embed"]["genre"]["embedding"])) < 0.2
  trained = jax.tree.map(lambda x: x, params)
  trained["embed"]["item_id"]["embedding"] = jnp.ones_like(table)
  feats = {k: jnp.zeros((2,) + v.shape[1:], v.dtype)
           for k, v in model.example_features.items()}
  feats[ITEM_ID] = jnp.array([0, 5])
  x = model.module.apply({"params": trained}, feats, method="featurize")
  names = [f.name for f in model.module.fields]
  at = names.index(ITEM_ID) * 4
  np.testing.assert_array_equal(x[0, at:at + 4], 0.0)  # hidden: zero
  np.testing.assert_array_equal(x[1, at:at + 4], 1.0)


def test_exclude_features_narrows_the_tables_and_checks_names(store):
  config = model_config(exclude_features=("zip", "occupation"), item_id=True)
  names = models.feature_names(config, store.features)
  assert set(names) == {f.name for f in store.features} - {"zip",
                                                            "occupation"}
  tables = FeatureTables.from_store(store, names, item_id=True)
  model = models.build(config, tables.specs)
  assert {f.name for f in model.module.fields} == set(names) | {ITEM_ID}
  with pytest.raises(ValueError, match="exclude_features.*postcode"):
    models.feature_names(model_config(exclude_features=("postcode",)),
                         store.features)


def test_item_id_dropout_hides_a_share_of_training_item_ids(store):
  split = splits.split(store, splits.ProtocolSpec(seed=0))
  tables = FeatureTables.from_store(store, (), item_id=True)
  base = SamplerSpec(seed=1, tasks_per_step=32, query_size=10,
                     max_support=16, buckets=(16,))
  plain = TrainSampler(split, tables, store.items, store.ratings, base)
  hiding = TrainSampler(split, tables, store.items, store.ratings,
                        dataclasses.replace(base, item_id_dropout=0.3))
  a, b = plain.batch(2)["support"], hiding.batch(2)["support"]
  real = a["mask"]
  assert (a["features"][ITEM_ID][real] > 0).all()
  hidden = (b["features"][ITEM_ID] == 0) & real
  assert 0.2 < hidden.sum() / real.sum() < 0.4
  # Only the ID is hidden: the other features and ratings are untouched.
  np.testing.assert_array_equal(a["features"]["genre"], b["features"]["genre"])
  np.testing.assert_array_equal(a["rating"], b["rating"])
  np.testing.assert_array_equal(
      hiding.batch(2)["support"]["features"][ITEM_ID],
      b["features"][ITEM_ID])  # deterministic


def test_the_missing_row_of_the_ids_as_features_embeds_to_zero():
  """Users and items without training ratings read row 0 of `user_key` and
  `item_key` (`FeatureTables.unseen_ids_missing`), a row no training task
  reads: a random vector never trained, one draw shared by every new user
  (UC MAE moved by up to 0.02 between draws, helper Q). Like a hidden
  `item_id`, it embeds to zero; other fields' row 0 (a missing value,
  which training users may have) does not."""
  from metarec_jax.data.schema import FeatureSpec  # pylint: disable=g-import-not-at-top
  from metarec_jax.models.melu import Embedder  # pylint: disable=g-import-not-at-top
  fields = (FeatureSpec("user_key", "user", "categorical", 6),
            FeatureSpec("item_key", "item", "categorical", 6),
            FeatureSpec("genre", "item", "categorical", 4))
  embed = Embedder(fields, dim=3)
  features = {"user_key": jnp.array([0, 2]), "item_key": jnp.array([3, 0]),
              "genre": jnp.array([0, 1])}
  params = embed.init(jax.random.PRNGKey(0), features)
  out = np.asarray(embed.apply(params, features)).reshape(2, 3, 3)
  tables = {k: np.asarray(v["embedding"]) for k, v in params["params"].items()}
  np.testing.assert_array_equal(out[0, 0], 0.0)  # a new user
  np.testing.assert_array_equal(out[1, 1], 0.0)  # a new item
  np.testing.assert_allclose(out[1, 0], tables["user_key"][2])
  np.testing.assert_allclose(out[0, 1], tables["item_key"][3])
  np.testing.assert_allclose(out[0, 2], tables["genre"][0])  # not zero
  assert np.abs(tables["user_key"][0]).sum() > 0  # (masked, not zeroed)
