"""`model.cold_blend=validated`: a model without an anchor serves a user
without ratings its predictions blended towards the training mean rating,
by factors that each validation fits (`models.cold_blend`,
`train.cold_factors`).

The blend must touch nothing else: adapted users are served the model's
own predictions, the inner loop fits what it fitted without `warm`'s term,
the losses are the module's own; and the validated factors must make the
meta-parameters no worse than the training mean on the validation users.
"""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import config_path, random_tasks, small_melu
from test_export import store_rows, write_file
from test_learners_export import check_export_and_serving
from metarec_jax import config_io, experiment, export, meta, models, runtime
from metarec_jax.data.schema import ITEM_ID, FeatureSpec
from metarec_jax.data.tasks import FeatureTables
from metarec_jax.models import calibration, cold_blend
from metarec_jax.export import exporter
from metarec_jax.train import (cold_factors, min_support, shares,
                               train_and_evaluate)
from metarec_jax.workdir.restore import load_state

LEVEL = 3.5
FIELDS = (FeatureSpec("genre", "item", "list", 6, 2),
          FeatureSpec("gender", "user", "categorical", 3),
          FeatureSpec(ITEM_ID, "item", "categorical", 9))
# Items 1-5 have training ratings, 6-8 none (new).
COUNTS = np.array([4, 2, 7, 1, 3, 0, 0, 0])
MC = meta.MetaConfig(inner_steps=2, inner_lr=0.3,
                     adapt=("^decision/", cold_blend.WARM_PATTERN))


def build(blend="validated", **keys):
  return models.build(small_melu(item_id=True, cold_blend=blend, **keys),
                      FIELDS, rating_mean=LEVEL, item_counts=COUNTS)


def with_leaf(params, name, value):
  return {**params, name: jnp.asarray(value, jnp.float32)}


def test_a_config_without_the_key_has_no_blend():
  """Runs written before the key keep their parameter tree (`BEFORE_KEY`):
  no blend, nothing adapted beyond what they adapted."""
  config = config_io.complete({"model": {"name": "melu"}})
  assert config.model.cold_blend == "none"
  model = build(blend="none")
  assert model.blend is None and not model.always_adapt
  assert not cold_blend.present(model.init(jax.random.PRNGKey(0)))


@pytest.mark.parametrize("keys", [
    {"anchor": True}, {"members": 2}, {"loss": "bce"},
])
def test_only_a_plain_rating_model_of_one_member_blends(keys):
  """The anchored models have their cold shares; an ensemble and a
  ranking loss are left as they are."""
  assert not models.blends_cold(small_melu(cold_blend="validated", **keys))
  assert models.blends_cold(small_melu(cold_blend="validated"))
  assert not models.blends_cold(small_melu(cold_blend="validated"),
                                "amortised")


def test_only_a_user_without_ratings_is_blended_by_the_kind_of_item():
  model = build()
  params = model.init(jax.random.PRNGKey(0))
  assert float(params[cold_blend.COLD_LEVEL]) == LEVEL
  np.testing.assert_array_equal(params[cold_blend.COLD_FACTOR], [1.0, 1.0])
  features = random_tasks(FIELDS, n_tasks=1, n_query=40)["query"]["features"]
  features = {k: jnp.asarray(v[0]) for k, v in features.items()}
  own = model.predict_unmapped(params, features)
  # Factor 1, training's: every bit of the prediction is served.
  np.testing.assert_array_equal(model.predict(params, features), own)
  blended = with_leaf(params, cold_blend.COLD_FACTOR, [0.25, 0.0])
  existing = np.asarray(params["median_kind"])[features[ITEM_ID]] > 0.5
  assert existing.any() and not existing.all()
  want = np.where(existing, LEVEL + 0.25 * (np.asarray(own) - LEVEL), LEVEL)
  served, ranked = model.predict_ranked(blended, features)
  np.testing.assert_allclose(served, want, rtol=1e-6)
  # What ranks the items is the model's own score, never a tie at factor 0.
  np.testing.assert_array_equal(ranked, own)
  adapted = with_leaf(blended, cold_blend.WARM, 0.6)
  np.testing.assert_array_equal(model.predict(adapted, features), own)


def test_the_inner_loop_fits_what_it_fitted_without_the_blend():
  """`warm` moves off 0 with any support rating and stays at 0 without
  one; every other adapted leaf, and the query loss, are those of the
  same model without the blend."""
  blended, plain = build(), build(blend="none")
  params = blended.init(jax.random.PRNGKey(1))
  own = {k: v for k, v in params.items()
         if k not in (cold_blend.COLD_FACTOR, cold_blend.COLD_LEVEL,
                      cold_blend.WARM)}
  tasks = random_tasks(FIELDS, n_tasks=3)
  for t in range(3):
    support = jax.tree.map(lambda x, t=t: jnp.asarray(x[t]),
                           tasks["support"])
    query = jax.tree.map(lambda x, t=t: jnp.asarray(x[t]), tasks["query"])
    a = meta.adapt(blended.loss_fn, params, support, config=MC)
    b = meta.adapt(plain.loss_fn, own,
                   support, config=meta.MetaConfig(
                       inner_steps=2, inner_lr=0.3, adapt=("^decision/",)))
    assert float(a[cold_blend.WARM]) > 0
    for x, y in zip(jax.tree.leaves(a["decision"]),
                    jax.tree.leaves(b["decision"])):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blended.query_loss_fn(a, query),
                               plain.loss_fn(b, query), rtol=1e-5)
    empty = {**support, "mask": jnp.zeros_like(support["mask"])}
    kept = meta.adapt(blended.loss_fn, params, empty, config=MC)
    assert float(kept[cold_blend.WARM]) == 0.0
    assert not bool(blended.counts(params, empty))


def test_a_support_set_below_the_minimum_counts_as_empty():
  """With `warm_min_support` 2, one rating leaves the meta-parameters
  (and `warm` at 0: the blend is served), two adapt."""
  model = build(warm_min_support="validated")
  params = model.init(jax.random.PRNGKey(2))
  assert float(params[cold_blend.WARM_MIN_SUPPORT]) == 1.0
  params = with_leaf(params, cold_blend.WARM_MIN_SUPPORT, 2.0)
  support = jax.tree.map(lambda x: jnp.asarray(x[0]),
                         random_tasks(FIELDS, n_tasks=1)["support"])
  for rows, counts in ((1, False), (2, True)):
    mask = jnp.arange(support["mask"].shape[0]) < rows
    one = {**support, "mask": mask}
    adapted = meta.adapt(model.loss_fn, params, one, config=MC)
    assert bool(model.counts(params, one)) == counts
    assert (float(adapted[cold_blend.WARM]) != 0.0) == counts
    same = all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(adapted["decision"]),
        jax.tree.leaves(params["decision"])))
    assert same != counts


def test_new_items_count_from_their_validated_minimum():
  """With `new_item_min_support` 3, two ratings of new items leave the
  support loss (with no other rating: as empty), three count; a rating of
  an existing item counts beside them."""
  model = build(new_item_min_support="validated")
  params = with_leaf(model.init(jax.random.PRNGKey(3)),
                     cold_blend.NEW_ITEM_MIN_SUPPORT, 3.0)
  support = jax.tree.map(lambda x: jnp.asarray(x[0]),
                         random_tasks(FIELDS, n_tasks=1)["support"])
  new, old = 6, 2  # item IDs: without and with training ratings
  for items, rows in (((new, new), (0, 0)), ((new, new, new), (1, 1, 1)),
                      ((new, new, old), (0, 0, 1))):
    n = len(items)
    one = {**support, "mask": jnp.arange(6) < n,
           "features": {**support["features"], ITEM_ID: jnp.asarray(
               list(items) + [0] * (6 - n))}}
    weights = np.asarray(cold_blend.support_weights(params, one))[:n]
    np.testing.assert_array_equal(weights, rows)
    assert bool(model.counts(params, one)) == any(rows)
    adapted = meta.adapt(model.loss_fn, params, one, config=MC)
    assert (float(adapted[cold_blend.WARM]) != 0.0) == any(rows)


def _kept(unadapted, true):
  unadapted, true = np.asarray(unadapted, float), np.asarray(true, float)
  return types.SimpleNamespace(unadapted_unclipped=unadapted, true=true,
                               mask=np.ones(true.shape, bool))


def _params(kinds=True):
  model = {cold_blend.COLD_FACTOR: np.ones(2, np.float32),
           cold_blend.COLD_LEVEL: np.float32(LEVEL)}
  if kinds:
    model["median_kind"] = np.ones(3, np.float32)
  return {"model": model}


def test_the_fit_keeps_what_validation_shows_and_else_the_mean():
  r = np.random.default_rng(0)
  true = r.integers(1, 6, (200, 10)).astype(float)
  good = _kept(true + r.normal(0, 0.3, true.shape), true)  # beats the mean
  noise = _kept(r.uniform(-3, 10, true.shape), true)  # loses to it
  factors, maes, served = cold_factors.fit(
      _params(), {"val": good, "val_new": noise}, 1.0, 5.0)
  assert served == maes  # no median map: served as blended
  assert factors == (1.0, 0.0)
  mean = np.abs(np.clip(LEVEL, 1, 5) - true).mean()
  assert maes["val_new"][1] == pytest.approx(mean)
  assert maes["val_new"][0] > mean > maes["val"][1] == maes["val"][0]
  # No validation task of new items: they follow the existing items.
  assert cold_factors.fit(_params(), {"val": good}, 1.0, 5.0)[0] == (1.0, 1.0)
  # No task at all: nothing shows the model beats the mean.
  assert cold_factors.fit(_params(), {}, 1.0, 5.0)[0] == (0.0, 0.0)


def test_a_model_that_tells_no_kinds_apart_fits_one_factor_on_both():
  """It serves one factor to every item, so both scenarios' tasks choose
  it: few good predictions of existing items, many bad ones of new."""
  r = np.random.default_rng(1)
  true = r.integers(1, 6, (440, 10)).astype(float)
  good = _kept(true[:40] + r.normal(0, 0.3, (40, 10)), true[:40])
  noise = _kept(r.uniform(-3, 10, (400, 10)), true[40:])
  kept = {"val": good, "val_new": noise}
  assert cold_factors.fit(_params(), kept, 1.0, 5.0)[0] == (1.0, 0.0)
  factors = cold_factors.fit(_params(kinds=False), kept, 1.0, 5.0)[0]
  assert factors[0] == factors[1] and factors[0] < 1.0


def test_a_small_shift_without_evidence_keeps_the_mean():
  """A blend above 0 must beat the mean by `shares.EVIDENCE` standard
  errors, not by the luck of the lowest of five values."""
  r = np.random.default_rng(2)
  true = r.integers(1, 6, (30, 10)).astype(float)
  almost = _kept(LEVEL + r.normal(0, 0.05, true.shape), true)
  assert cold_factors.fit(_params(), {"val": almost}, 1.0, 5.0)[0] == (
      0.0, 0.0)


def test_the_factor_is_chosen_as_served_through_the_median_map():
  """Predictions whose spread around the level is too small to beat the
  mean on their own, served through a map that turns that spread into
  ratings: the map comes after the blend, so the factor that serves best
  through it (1) is kept, where the blend alone would keep the mean (0)."""
  r = np.random.default_rng(3)
  true = r.integers(1, 6, (200, 10)).astype(float)
  spread = _kept(3.75 + 0.025 * (true - 3), true)  # within 3.7 to 3.8
  params = _params()
  alone = cold_factors.fit(params, {"val": spread}, 1.0, 5.0)
  assert alone[0] == (0.0, 0.0)
  at = np.linspace(1.0, 5.0, calibration.KNOTS)
  target = np.where(at < 3.75, 1.5, 4.5)  # 1.5 up to 3.7, 4.5 from 3.8
  params["model"][calibration.MEDIAN_KNOTS] = at.astype(np.float32)
  # Row 1, new items': the identity, through which the spread loses.
  params["model"][calibration.MEDIAN_OFFSETS] = np.stack(
      [target - at, np.zeros_like(at)]).astype(np.float32)
  factors, maes, served = cold_factors.fit(
      params, {"val": spread, "val_new": spread}, 1.0, 5.0)
  assert factors == (1.0, 0.0)  # each kind through its own row
  # Reported without the map (at 1 and at the factor, here both 1) ...
  assert maes["val"] == (alone[1]["val"][0],) * 2
  assert maes["val"][1] > 1.3  # |t - u|, above the level's 1.3
  # ... and as served: |t - map(u)| is 0.5, 0.25, 0, 0.25, 0.5 for t = 1..5.
  assert served["val"] == pytest.approx((0.3, 0.3), abs=1e-3)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
  """A tiny plain MeLU (no anchor) reading item IDs, trained 6 steps."""
  workdir = str(tmp_path_factory.mktemp("cold_blend") / "run")
  config = config_io.load_config_file(config_path("tiny"))
  config.model.anchor = False
  config.model.item_id = True
  summary = train_and_evaluate(config, workdir)
  return workdir, summary


def test_validation_serves_the_new_visitor_no_worse_than_the_mean(plain_run):
  workdir, summary = plain_run
  # As served (the blend through the median map, what the factors are
  # chosen on; the reported `mae_unadapted` is the blend's alone).
  with open(f"{workdir}/metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  fitted = [r for r in rows if "val/cold_blend_mae" in r]
  assert fitted and fitted[-1]["step"] == summary["step"]
  for name in ("val", "best"):
    val = summary[name] if name == "val" else summary["best"]["val"]
    mean = val["baselines"]["global_mean"]["mae"]
    served = next(r for r in fitted if r["step"] == (
        summary["step"] if name == "val" else summary["best"]["step"]))
    assert served["val/cold_blend_mae"] <= mean + 1e-9
  exp = experiment.build(config_io.read_workdir_config(workdir), workdir)
  params = jax.device_get(load_state(exp, workdir,
                                     runtime.make_mesh()).params)["model"]
  assert float(params[cold_blend.WARM]) == 0.0  # meta_fixed
  for leaf in (cold_blend.WARM_MIN_SUPPORT, cold_blend.NEW_ITEM_MIN_SUPPORT):
    assert float(params[leaf]) in min_support.GRID
  assert tuple(params[cold_blend.COLD_FACTOR].tolist()) in {
      (a, b) for a in shares.GRID for b in shares.GRID}
  assert float(params[cold_blend.COLD_LEVEL]) == pytest.approx(
      exp.model.blend.level)


def test_the_export_serves_the_blend_to_unknown_users(plain_run, tmp_path):
  """The export carries the factors and each user's `warm`: an exported
  user is served as the core adapts them (`check_export_and_serving`), an
  unknown one the meta-parameters' predictions blended, then mapped."""
  workdir, _ = plain_run
  meta_params = check_export_and_serving(workdir, tmp_path, encoder=False)
  exp = experiment.build(config_io.read_workdir_config(workdir), workdir)
  loaded = export.load(str(tmp_path / "export"))
  assert loaded.user(4).personal and not loaded.adapt([]).personal
  query = np.arange(30)
  user = {n: np.zeros_like(t[:1]) for n, t in exp.tables.user.items()}
  tables = FeatureTables(exp.tables.specs, user, exp.tables.item)
  rows = tables.rows(np.zeros(1, np.int64), query[None],
                     np.zeros((1, len(query)), np.float32),
                     np.ones((1, len(query)), bool))
  features = jax.tree.map(lambda a: jnp.asarray(a[0]), rows["features"])
  model = meta_params["model"]
  own = np.asarray(exp.model.predict_unmapped(model, features), np.float64)
  factor = np.asarray(model[cold_blend.COLD_FACTOR], np.float64)
  existing = np.asarray(model["median_kind"])[np.asarray(
      features[ITEM_ID])] > 0.5
  chosen = np.where(existing, factor[0], factor[1])
  want = own - (1 - chosen) * (own - float(model[cold_blend.COLD_LEVEL]))
  if exp.model.median_map:
    want = np.asarray(calibration.serve(model, jnp.asarray(want, jnp.float32),
                                        features[ITEM_ID]))
  np.testing.assert_allclose(loaded.predict(10 ** 9,
                                            exp.store.item_ids[query]),
                             want, rtol=1e-5, atol=1e-5)


def test_a_user_below_the_validated_minimum_is_served_the_blend(plain_run,
                                                               tmp_path):
  """The export of the run's checkpoint read at `warm_min_support` 3: two
  ratings are served the meta-parameters' blend and said not personal,
  three adapt."""
  workdir, _ = plain_run
  minimum = next(m for m in min_support.MINIMA
                 if m.leaf == cold_blend.WARM_MIN_SUPPORT)
  exp = experiment.build(config_io.read_workdir_config(workdir), workdir)
  path = write_file(tmp_path / "r.csv", exp, *store_rows(exp, [4, 5]))
  real = exporter.load_state
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(exporter, "load_state", lambda *a, **k: (
        lambda state: state.replace(params=min_support.with_value(
            state.params, minimum, 3.0)))(real(*a, **k)))
    export.export_workdir(workdir, path, str(tmp_path / "export"), top_k=3)
  loaded = export.load(str(tmp_path / "export"))
  films = exp.store.item_ids[:3].tolist()
  probe = exp.store.item_ids[10:40]
  two = loaded.adapt([(f, 4.0) for f in films[:2]])
  three = loaded.adapt([(f, 4.0) for f in films])
  assert not two.personal and three.personal
  np.testing.assert_array_equal(two.predict(probe),
                                loaded.adapt([]).predict(probe))
  assert not np.array_equal(three.predict(probe), two.predict(probe))


def test_a_run_without_the_blend_keeps_it_off_when_resumed(tmp_path,
                                                            caplog):
  """`model.cold_blend` shapes the parameter tree: a plain run trained
  without it (a run of before the key) resumes without it, whatever the
  config says, and its checkpoints never hold the blend's leaves."""
  workdir = str(tmp_path / "run")

  def config(steps, blend):
    c = config_io.load_config_file(config_path("tiny"))
    c.model.anchor = False
    c.model.cold_blend = blend
    c.train.num_steps, c.train.eval_every_steps = steps, -1
    c.checkpoint.every_steps = 2
    return c

  train_and_evaluate(config(2, "none"), workdir)
  with caplog.at_level("INFO", logger="metarec"):
    train_and_evaluate(config(4, "validated"), workdir)
  assert "model.cold_blend stays 'none', the run's own" in caplog.text
  saved = config_io.read_workdir_config(workdir)
  assert saved.model.cold_blend == "none" and saved.train.num_steps == 4
  exp = experiment.build(saved, workdir)
  params = jax.device_get(load_state(exp, workdir,
                                     runtime.make_mesh()).params)["model"]
  assert not cold_blend.present(params) and cold_blend.WARM not in params
