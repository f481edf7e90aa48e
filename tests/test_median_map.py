"""The validated median map (`train.median_map`, `model.calibration`):
fitted on discrete ratings it moves mean estimates to the medians, never
reorders a user's items, and is kept only on the evidence."""

import numpy as np
import pytest

from metarec_jax.train import median_map

AT = median_map.knots(1, 5)


def discrete_tasks(n_tasks=400, q=10, seed=0):
  """Ratings whose mean (the prediction, `level`) is not their median:
  `floor(level)` or one above it, the latter with probability equal to the
  fractional part, so the median is the likelier of the two."""
  rng = np.random.default_rng(seed)
  level = rng.uniform(1.2, 4.6, size=(n_tasks, q))
  base = np.floor(level)
  # P(base + 1) = frac: the mean is `level`, the median the likelier side.
  rating = base + (rng.random(level.shape) < level - base)
  return level.astype(np.float32), rating, np.ones(level.shape, bool)


def task_mae(pred, rating, mask):
  return np.abs(pred - rating)[mask].mean()


def test_the_map_moves_mean_estimates_to_the_medians():
  pred, rating, mask = discrete_tasks()
  offsets, verdicts = median_map.fit({"val": (pred, rating, mask)}, AT)
  kept, crossed = verdicts["val"]
  assert kept  # the evidence is there
  before = task_mae(pred, rating, mask)
  # Half the tasks fitted, the other half scored: much lower MAE.
  assert crossed < 0.9 * before, (crossed, before)
  fresh, fresh_rating, m = discrete_tasks(seed=1)
  after = task_mae(np.clip(median_map.mapped(fresh, AT, offsets), 1, 5),
                   fresh_rating, m)
  assert after < 0.9 * task_mae(fresh, fresh_rating, m)
  # A level of 3.2 is rated 3 more often than 4: mapped near 3.
  assert abs(median_map.mapped(np.float32(3.2), AT, offsets) - 3.0) < 0.1


def test_the_map_never_reorders_predictions():
  pred, rating, mask = discrete_tasks()
  offsets, _ = median_map.fit({"val": (pred, rating, mask)}, AT)
  p = np.linspace(0.0, 6.0, 2001)  # beyond the scale too
  out = median_map.mapped(p, AT, offsets)
  slope = np.diff(out) / np.diff(p)
  assert slope.min() >= median_map.MIN_SLOPE * (1 - 1e-4)


def test_no_evidence_keeps_the_identity():
  rng = np.random.default_rng(0)
  # Continuous symmetric noise: the prediction is the mean and the median.
  pred = rng.uniform(2, 4, size=(300, 10)).astype(np.float32)
  rating = pred + rng.normal(scale=0.5, size=pred.shape)
  _, verdicts = median_map.fit(
      {"val": (pred, rating, np.ones(pred.shape, bool))}, AT)
  assert verdicts["val"][0] is False
  # One task cannot say anything.
  pred, rating, mask = discrete_tasks(n_tasks=1)
  assert median_map.fit({"val": (pred, rating, mask)}, AT)[1] == {}


def test_rows_outside_the_mask_do_not_count():
  pred, rating, mask = discrete_tasks()
  mask[:, 5:] = False
  garbage = np.where(mask, rating, 1e6)
  a, _ = median_map.fit({"val": (pred, rating, mask)}, AT)
  b, _ = median_map.fit({"val": (pred, garbage, mask)}, AT)
  np.testing.assert_array_equal(a, b)


def test_one_map_for_both_kinds_of_item_each_on_its_own_evidence():
  import types  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params = {"model": {"median_knots": jnp.zeros(median_map.KNOTS),
                      "median_offsets": jnp.zeros((2, median_map.KNOTS))}}

  def scenario(pred, rating, mask):
    return types.SimpleNamespace(adapted=pred, true=rating, mask=mask)

  existing = scenario(*discrete_tasks())
  rng = np.random.default_rng(3)
  level = rng.uniform(2, 4, size=(300, 10)).astype(np.float32)
  symmetric = scenario(level, level + rng.normal(scale=0.5, size=level.shape),
                       np.ones(level.shape, bool))
  for new, kept in ((symmetric, 0.0), (scenario(*discrete_tasks(seed=2)), 1.0),
                    (None, None)):
    out, scalars = median_map.fit_served(
        params, {"val": existing, "val_new": new}, ("val", "val_new"), 1, 5)
    offsets = np.asarray(out["model"]["median_offsets"])
    assert scalars["val/median_map"] == 1.0 and offsets[0].any()
    np.testing.assert_allclose(np.asarray(out["model"]["median_knots"]), AT)
    assert scalars.get("val_new/median_map") == kept
    assert bool(offsets[1].any()) == bool(kept)
    if kept:  # one map, fitted on both scenarios' rows
      np.testing.assert_array_equal(offsets[0], offsets[1])
  # Nothing to fit on: the identity.
  out, scalars = median_map.fit_served(params, {}, ("val", "val_new"), 1, 5)
  assert scalars == {} and not np.asarray(out["model"]["median_offsets"]).any()


def test_a_kind_with_few_tasks_keeps_the_pooled_map_unless_its_tasks_object():
  # Six new-item tasks of three ratings cannot show the evidence alone...
  small = discrete_tasks(n_tasks=6, q=3, seed=10)
  assert median_map.fit({"val_new": small}, AT)[1]["val_new"][0] is False
  # ...but the map is a property of the scale, shown on the pooled tasks:
  # the small kind keeps it where its own tasks' MAE is lower with it.
  _, verdicts = median_map.fit({"val": discrete_tasks(), "val_new": small},
                               AT)
  kept, crossed = verdicts["val_new"]
  assert kept and crossed < task_mae(*small)
  # Tasks that the map makes worse do not keep it, pooled evidence or not.
  pred, rating, mask = small
  worse = (pred, np.where(rating > pred, np.floor(pred), np.ceil(pred)),
           mask)  # every rating on the side the map moves away from
  _, verdicts = median_map.fit({"val": discrete_tasks(), "val_new": worse},
                               AT)
  assert verdicts["val_new"][0] is False


def test_other_predictions_are_judged_through_the_same_map():
  """`scored`: a scenario's verdict and cross-fitted MAE are those of
  other predictions of its tasks, through the maps fitted on `parts`; the
  map and every other scenario's verdict stay as without it (what lets
  `train.new_item_prior` choose new items' predictions without moving
  the map of existing items). `served_mae` reads the same verdict."""
  import types  # pylint: disable=g-import-not-at-top
  parts = {"val": discrete_tasks(), "val_new": discrete_tasks(200, seed=4)}
  offsets, verdicts = median_map.fit(parts, AT)
  pred, rating, mask = parts["val_new"]
  # The same tasks predicted 0.3 too high, and predicted by noise alone.
  for other in (pred + np.float32(0.3),
                np.random.default_rng(5).uniform(1, 5, pred.shape)):
    other = np.clip(other, 1, 5).astype(np.float32)
    moved, judged = median_map.fit(parts, AT, scored={"val_new": other})
    np.testing.assert_array_equal(moved, offsets)
    assert judged["val"] == verdicts["val"]
    assert judged["val_new"] != verdicts["val_new"]
    kept, crossed = judged["val_new"]
    p = {name: types.SimpleNamespace(adapted=a, true=r, mask=m)
         for name, (a, r, m) in parts.items()}
    served = median_map.served_mae(
        p, ("val", "val_new"), "val_new",
        types.SimpleNamespace(adapted=other, true=rating, mask=mask), 1, 5)
    assert served == pytest.approx(crossed if kept
                                   else task_mae(other, rating, mask))


def test_a_model_that_cannot_tell_new_items_needs_the_evidence_of_both():
  import types  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params = {"model": {"median_knots": jnp.zeros(median_map.KNOTS),
                      "median_offsets": jnp.zeros((2, median_map.KNOTS))}}
  existing = types.SimpleNamespace(**dict(zip(("adapted", "true", "mask"),
                                              discrete_tasks())))
  rng = np.random.default_rng(3)
  level = rng.uniform(2, 4, size=(300, 10)).astype(np.float32)
  symmetric = types.SimpleNamespace(
      adapted=level, true=level + rng.normal(scale=0.5, size=level.shape),
      mask=np.ones(level.shape, bool))
  scenarios = {"val": existing, "val_new": symmetric}
  out, scalars = median_map.fit_served(params, scenarios, ("val", "val_new"),
                                       1, 5, per_kind=False)
  assert scalars["val/median_map"] == 0.0 == scalars["val_new/median_map"]
  assert not np.asarray(out["model"]["median_offsets"]).any()
  out, scalars = median_map.fit_served(params, {"val": existing},
                                       ("val", "val_new"), 1, 5,
                                       per_kind=False)
  assert scalars["val/median_map"] == 1.0
  assert np.asarray(out["model"]["median_offsets"]).any()


def test_any_rating_model_serves_through_the_map_per_kind_of_item():
  """Plain MeLU too (`Recommender.predict`): each item's kind from its
  training ratings where the model reads item IDs, else the first row for
  every item; the losses never see the map."""
  import jax  # pylint: disable=g-import-not-at-top
  from conftest import model_section, random_tasks  # pylint: disable=g-import-not-at-top
  from metarec_jax import meta, models  # pylint: disable=g-import-not-at-top
  from metarec_jax.data.schema import FeatureSpec, item_id_spec  # pylint: disable=g-import-not-at-top
  counts = np.array([3, 0, 5])  # item 2 has no training ratings
  for with_id in (True, False):
    fields = (FeatureSpec("genre", "item", "list", 7, 3),
              FeatureSpec("gender", "user", "categorical", 3))
    fields += (item_id_spec(3),) if with_id else ()
    cfg = model_section({"name": "melu", "calibration": "median",
                         "item_id": with_id, "embed_dim": 4, "hidden": (8,)})
    model = models.build(cfg, fields, rating_mean=3.0, item_counts=counts)
    assert model.median_map
    assert (model.existing_items is not None) == with_id
    params = model.init(jax.random.PRNGKey(0))
    t = random_tasks(fields, n_tasks=2, n_support=4, n_query=6)
    features = t["query"]["features"]
    if with_id:
      features = {**features,
                  "item_id": np.arange(12).reshape(2, 6) % 3 + 1}
    plain = np.asarray(model.module.apply({"params": params}, features))
    np.testing.assert_allclose(np.asarray(model.predict(params, features)),
                               plain, rtol=1e-6)  # the identity
    shifts = np.array([0.5, -0.5], np.float32)
    mapped = {**params, "median_knots": AT.astype(np.float32),
              "median_offsets": np.repeat(shifts[:, None], len(AT), 1)}
    served = np.asarray(model.predict(mapped, features))
    if with_id:
      new = counts[features["item_id"] - 1] == 0
      np.testing.assert_allclose(served, plain + np.where(new, -0.5, 0.5),
                                 rtol=1e-5)
    else:
      np.testing.assert_allclose(served, plain + 0.5, rtol=1e-5)
    config = meta.MetaConfig(inner_lr=0.1, adapt=model.adapt)
    task = jax.tree.map(lambda a: a[0], t)
    loss = lambda p: meta.task_loss(model.loss_fn, p, task, config=config)  # noqa: E731
    np.testing.assert_allclose(float(loss(mapped)), float(loss(params)),
                               rtol=1e-6)
  # Implicit feedback (ranking losses): no map.
  cfg = model_section({"name": "melu", "calibration": "median", "loss": "bce",
                       "embed_dim": 4, "hidden": (8,)})
  assert not models.build(cfg, fields, item_counts=counts).median_map


def test_a_student_learns_from_the_teachers_fitted_ratings_not_its_map():
  import jax  # pylint: disable=g-import-not-at-top
  from conftest import model_section, random_tasks  # pylint: disable=g-import-not-at-top
  from metarec_jax import meta, models  # pylint: disable=g-import-not-at-top
  from metarec_jax.data.schema import FeatureSpec  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import distill  # pylint: disable=g-import-not-at-top
  fields = (FeatureSpec("genre", "item", "list", 7, 3),
            FeatureSpec("gender", "user", "categorical", 3))
  model = models.build(model_section({"name": "melu", "calibration": "median",
                                      "embed_dim": 4, "hidden": (8,)}),
                       fields, rating_mean=3.0)
  params = model.init(jax.random.PRNGKey(0))
  mapped = {**params, "median_knots": AT.astype(np.float32),
            "median_offsets": np.full((2, len(AT)), 0.7, np.float32)}
  config = meta.MetaConfig(inner_lr=0.1, adapt=model.adapt)
  tasks = jax.tree.map(  # float32 ratings, as batches hold them
      lambda a: a.astype(np.float32) if a.dtype == np.float64 else a,
      random_tasks(fields, n_tasks=2, n_support=4, n_query=5))
  blend = distill.targets_fn(model, config, 1.0)  # the teacher's alone
  out = np.asarray(blend(mapped, None, tasks)["query"]["rating"])
  fitted = [model.predict_unmapped(
      meta.adapt(model.loss_fn, mapped, jax.tree.map(lambda a: a[i],
                                                     tasks["support"]),
                 config=config), jax.tree.map(lambda a: a[i],
                                              tasks["query"]["features"]))
            for i in range(2)]
  np.testing.assert_allclose(out, np.stack(fitted), rtol=1e-5)


def test_a_scale_of_one_value_or_of_any_width_is_handled():
  import types  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  params = {"model": {"median_knots": jnp.zeros(median_map.KNOTS),
                      "median_offsets": jnp.zeros((2, median_map.KNOTS))}}
  pred, rating, mask = discrete_tasks()
  one = types.SimpleNamespace(adapted=np.full_like(pred, 4.0),
                              true=np.full_like(rating, 4.0), mask=mask)
  out, scalars = median_map.fit_served(params, {"val": one},
                                       ("val", "val_new"), 4.0, 4.0)
  assert scalars == {}
  assert np.all(np.isfinite(np.asarray(out["model"]["median_knots"])))
  # A 1-10 scale (ratings doubled): the map is fitted and kept as on 1-5.
  ten = types.SimpleNamespace(adapted=2 * pred, true=2 * rating, mask=mask)
  out, scalars = median_map.fit_served(params, {"val": ten},
                                       ("val", "val_new"), 2.0, 10.0)
  assert scalars["val/median_map"] == 1.0
  np.testing.assert_allclose(np.asarray(out["model"]["median_knots"]),
                             median_map.knots(2.0, 10.0), rtol=1e-6)


def test_the_top_k_ranks_by_the_models_scores_across_kinds_of_item():
  """One kind of item served through a map that pulls ratings down, the
  other through the identity (each kind's own verdict): ranked through
  the maps, every item of the identity's kind outranked every item of the
  other (a generated Book-Crossing-style log: items without training
  ratings at the top of every list, eval's nDCG below the baseline the
  model served). The top-k and eval rank the scores before the map and
  show the served ratings."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from conftest import model_section  # pylint: disable=g-import-not-at-top
  from metarec_jax import models  # pylint: disable=g-import-not-at-top
  from metarec_jax.data.schema import FeatureSpec, item_id_spec  # pylint: disable=g-import-not-at-top
  from metarec_jax.export import batched, compute  # pylint: disable=g-import-not-at-top
  items = 8
  counts = np.array([4, 4, 0, 4, 0, 4, 4, 0])  # 3, 5 and 8 have none
  fields = (FeatureSpec("gender", "user", "categorical", 3),
            item_id_spec(items))
  cfg = model_section({"name": "melu", "calibration": "median",
                       "item_id": True, "embed_dim": 4, "hidden": (8,)})
  model = models.build(cfg, fields, rating_mean=3.0, item_counts=counts)
  params = model.init(jax.random.PRNGKey(3))
  # Kind 0 (training ratings) mapped down by 2 stars; kind 1 the identity.
  params = {**params, "median_knots": AT.astype(np.float32),
            "median_offsets": np.stack([np.full(len(AT), -2.0),
                                        np.zeros(len(AT))]).astype(
                                            np.float32)}
  user = {"gender": jnp.asarray(1, jnp.int32)}
  catalogue = {"item_id": jnp.arange(1, items + 1, dtype=jnp.int32)}
  served, ranked = compute.rank_items(model, params, {}, user, catalogue)
  assert np.allclose(np.asarray(served),
                     np.asarray(ranked) + np.where(counts > 0, -2.0, 0.0),
                     atol=1e-5)
  best = np.argsort(-np.asarray(ranked), kind="stable")[:4]
  scores, index = batched.top_k_users(
      model, params, {}, jax.tree.map(lambda a: a[None], user), catalogue,
      jnp.zeros((1, items), bool), k=4)
  assert np.asarray(index)[0].tolist() == best.tolist()
  np.testing.assert_allclose(np.asarray(scores)[0],
                             np.asarray(served)[best], rtol=1e-6)
  blocks = {"item_id": catalogue["item_id"].reshape(2, 4)}
  scores, index, bad = compute.top_k_one(
      model, params, {}, user, jnp.asarray([-1], jnp.int32), blocks,
      jnp.arange(items, dtype=jnp.int32).reshape(2, 4), 4)
  assert np.asarray(index).tolist() == best.tolist() and int(bad) == 0
  np.testing.assert_allclose(np.asarray(scores), np.asarray(served)[best],
                             rtol=1e-6)
  # Through the maps the order would differ: the test is not vacuous.
  assert np.argsort(-np.asarray(served), kind="stable")[:4].tolist() != (
      best.tolist())
