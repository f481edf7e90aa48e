"""The ID-embedding model (`idemb`) and the virtual `item_id` feature.

The end-to-end run (`configs/tiny.py` with `model.name=idemb`, trained and
evaluated) is in `test_compare.py`, which trains idemb runs anyway.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import model_section
from metarec_jax import config_defaults, config_io, meta, models
from metarec_jax.data.convert import synthetic
from metarec_jax.data.schema import ITEM_ID, FeatureSpec, item_id_spec
from metarec_jax.data.store import open_store
from metarec_jax.data.tasks import FeatureTables, batch_shapes


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  path = tmp_path_factory.mktemp("store") / "store"
  synthetic.generate(synthetic.SyntheticSpec(
      num_users=40, num_items=25, min_ratings=10, max_ratings=20,
      director_vocab=9, actor_vocab=11, zip_vocab=7), path)
  return open_store(path)


def model_config(**changes):
  c = model_section({"name": "idemb", "features": (), "embed_dim": 4,
                     "hidden": (6,), "interaction": "dot",
                     "item_features": True})
  c.update(changes)
  return c


def test_feature_tables_provide_item_id(store):
  only = FeatureTables.from_store(store, (ITEM_ID,))
  assert only.specs == (item_id_spec(store.num_items),)
  assert only.specs[0].vocab == store.num_items + 1
  every = FeatureTables.from_store(store, (), item_id=True)
  assert [s.name for s in every.specs] == (
      [s.name for s in store.features] + [ITEM_ID])
  plain = FeatureTables.from_store(store, ())
  assert ITEM_ID not in [s.name for s in plain.specs]
  some = FeatureTables.from_store(store, ("genre", ITEM_ID))
  assert [s.name for s in some.specs] == ["genre", ITEM_ID]

  items = np.array([[0, 5, 24, 3], [7, 7, 0, 0]])
  mask = np.array([[True, True, True, False], [True, True, False, False]])
  rows = every.rows(np.array([0, 1]), items, np.ones(items.shape), mask)
  ids = rows["features"][ITEM_ID]
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, np.where(mask, items + 1, 0))
  np.testing.assert_array_equal(rows["features"]["genre"][0, 2],
                                store.item_features["genre"][24])

  shapes = batch_shapes(every.specs, 3, 8, 5)
  assert shapes["support"]["features"][ITEM_ID].shape == (3, 8)
  assert shapes["query"]["features"][ITEM_ID].dtype == np.int32
  assert models.example_features(every.specs)[ITEM_ID].shape == (1,)


def test_needs_item_id():
  assert models.needs_item_id(model_config())
  assert not models.needs_item_id(model_config(name="melu"))
  assert models.needs_item_id(model_config(name="melu",
                                           features=("genre", ITEM_ID)))


@pytest.mark.parametrize("interaction,item_features", [("dot", True),
                                                       ("mlp", False)])
def test_only_the_user_part_adapts(store, interaction, item_features):
  specs = FeatureTables.from_store(store, (), item_id=True).specs
  model = models.build(model_config(interaction=interaction,
                                    item_features=item_features), specs,
                       rating_mean=3.5)
  # Jitted: eager flax init and apply compile every primitive one by one.
  params = jax.jit(model.init)(jax.random.PRNGKey(0))
  assert not np.asarray(params["item"]["id"]["embedding"]).any()
  paths = meta.leaf_paths(params)
  mask = meta.adapt_mask(params, model.adapt)
  assert sorted(p for p, m in zip(paths, mask) if m) == [
      "user/bias", "user/embedding"]
  assert params["user"]["embedding"].shape == (4,)
  assert params["item"]["id"]["embedding"].shape == (store.num_items + 1, 4)
  assert any(p.startswith("item/features/") for p in paths) == item_features
  assert ("global_bias" in params) == (interaction == "dot")
  # Item features reach the prediction only when switched on.
  r = np.random.default_rng(0)
  feats = {s.name: jnp.asarray(r.integers(1, s.vocab, (6, s.max_len)
                                          if s.kind == "list" else (6,)))
           for s in specs}
  pred = jax.jit(model.predict)(params, feats)
  assert pred.shape == (6,) and np.isfinite(pred).all()
  batch = {"features": feats, "rating": jnp.asarray(r.integers(1, 6, 6),
                                                    jnp.float32),
           "mask": jnp.ones(6, bool)}
  # The ID embeddings start at zero (an unseen item adds nothing); give them
  # values so that the user embedding has a gradient.
  params["item"]["id"]["embedding"] = jnp.asarray(
      r.normal(size=params["item"]["id"]["embedding"].shape), jnp.float32)
  config = meta.MetaConfig(inner_steps=2, inner_lr=0.1, adapt=model.adapt)
  adapted = jax.jit(lambda p, b: meta.adapt(model.loss_fn, p, b,
                                            config=config))(params, batch)
  for p, a, b in zip(paths, jax.tree.leaves(adapted),
                     jax.tree.leaves(params)):
    if p.startswith("user/"):
      assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0, p
    else:
      np.testing.assert_array_equal(a, b)


def test_build_errors():
  no_ids = (FeatureSpec("genre", "item", "list", 5, 2),)
  with pytest.raises(ValueError, match="item_id"):
    models.build(model_config(), no_ids)
  with pytest.raises(ValueError, match="model.interaction"):
    models.build(model_config(interaction="cosine"),
                 no_ids + (item_id_spec(9),))


def test_adapting_the_user_embedding_lowers_the_query_loss():
  """Users whose ratings are linear in item vectors: a few inner steps on
  the support set fit the user and lower the loss on held-out items."""
  num_items, dim, num_tasks = 40, 4, 16
  model = models.build(model_config(embed_dim=dim, item_features=False),
                       (item_id_spec(num_items),), rating_mean=3.0)
  params = jax.jit(model.init)(jax.random.PRNGKey(0))
  r = np.random.default_rng(1)
  item_vecs = r.normal(size=(num_items + 1, dim)) * 0.5
  params["item"]["id"]["embedding"] = jnp.asarray(item_vecs, jnp.float32)
  users = r.normal(size=(num_tasks, dim))

  def rows(n):
    items = r.integers(1, num_items + 1, (num_tasks, n))
    rating = 3.0 + np.einsum("td,tnd->tn", users, item_vecs[items])
    return {"features": {ITEM_ID: jnp.asarray(items, jnp.int32)},
            "rating": jnp.asarray(rating, jnp.float32),
            "mask": jnp.ones((num_tasks, n), bool)}

  tasks = {"support": rows(12), "query": rows(6)}
  config = meta.MetaConfig(inner_steps=10, inner_lr=0.5, adapt=model.adapt)

  @jax.jit
  def losses(params, tasks):
    def one(task):
      adapted = meta.adapt(model.loss_fn, params, task["support"],
                           config=config)
      return (model.loss_fn(params, task["query"]),
              model.loss_fn(adapted, task["query"]))
    return jax.vmap(one)(tasks)

  before, after = map(np.asarray, losses(params, tasks))
  assert (after < before).all()
  assert after.mean() < 0.5 * before.mean()


def test_anchor_applies_to_idemb_from_anchor_version_2_only():
  """An idemb config written before `model.anchor_version` existed (its
  `model.anchor: true` applied to `melu` only) keeps the plain IDEmb and its
  parameters, so its checkpoints and exports still load; a new config
  (the defaults: anchor on, version 2) builds the anchored IDEmb."""
  fields = (FeatureSpec("genre", "item", "list", 7, 3), item_id_spec(5))
  old = config_io.complete({"model": {"name": "idemb", "anchor": True}})
  assert old.model.anchor_version == 1 and not models.is_anchored(old.model)
  plain = models.build(old.model, fields).init(jax.random.PRNGKey(0))
  assert set(plain) == {"user", "item", "global_bias"}
  assert set(plain["user"]) == {"embedding", "bias"}
  new = config_defaults.get_config()
  new.model.name = "idemb"
  assert new.model.anchor_version == 2 and models.is_anchored(new.model)
  anchored = models.build(new.model, fields).init(jax.random.PRNGKey(0))
  assert {"user_bias", "base_bias", "user_prior", "share",
          "item_bias"} <= set(anchored)
  assert set(anchored["user"]) == {"embedding"}
