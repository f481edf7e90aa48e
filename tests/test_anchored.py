"""The baseline-anchored models (`model.anchor`: MeLU, IDEmb with a dot or
an MLP interaction): they start from the baseline, and at share 0 they are
the baseline."""

import jax
import numpy as np
import pytest

from conftest import model_section, random_tasks
from metarec_jax import meta, models
from metarec_jax.data.schema import FeatureSpec, item_id_spec

FIELDS = (FeatureSpec("genre", "item", "list", 7, 3),
          FeatureSpec("gender", "user", "categorical", 3),
          item_id_spec(5))
ITEM_MEANS = np.array([2.5, 3.0, 4.25, 3.5, 4.0])  # items 1..5 (shrunk)
COUNTS = np.array([3, 40, 0, 7, 12])
MU, PRIOR = 3.4, 3.0
KINDS = {"melu": {"name": "melu"},
         "idemb": {"name": "idemb", "interaction": "dot"},
         "idemb_mlp": {"name": "idemb", "interaction": "mlp"}}
KIND = "melu"  # every test runs for each of KINDS (the fixture below)


@pytest.fixture(autouse=True, params=sorted(KINDS))
def kind(request, monkeypatch):
  monkeypatch.setitem(globals(), "KIND", request.param)
  return request.param


def build(prior=PRIOR, new_item_prior="same", new_item_min_support="none",
          cold_share="same", warm_min_support="none", support_rank_weight=0.0,
          **meta_kw):
  cfg = model_section({
      **KINDS[KIND], "anchor": True, "anchor_version": 2,
      "user_bias_prior": prior, "calibration": "median",  # identity as init
      "new_item_prior": new_item_prior,
      "new_item_min_support": new_item_min_support,
      "warm_min_support": warm_min_support, "cold_share": cold_share,
      "support_rank_weight": support_rank_weight,
      "embed_dim": 4, "hidden": (8,), "embed_std": 0.1, "item_id": False})
  assert models.is_anchored(cfg)
  model = models.build(cfg, FIELDS, rating_mean=MU, item_means=(ITEM_MEANS, COUNTS / (COUNTS + 5.0)),
                       inner_lr=0.1, item_counts=COUNTS)
  config = meta.MetaConfig(inner_lr=0.1, adapt=meta_kw.pop("adapt",
                                                           model.adapt),
                           **meta_kw)
  return model, config


def tasks():
  t = random_tasks(FIELDS, n_tasks=4, n_support=9, n_query=5)
  for part in ("support", "query"):  # real item ids 1..5 on real rows
    t[part]["features"]["item_id"] = np.where(
        t[part]["mask"], t[part]["features"]["item_id"] % 5 + 1, 0)
  return t


def test_meta_parameters_predict_the_item_means():
  model, _ = build()
  params = model.init(jax.random.PRNGKey(0))
  t = tasks()
  ids = t["query"]["features"]["item_id"]
  pred = np.asarray(model.predict(params, t["query"]["features"]))
  real = t["query"]["mask"]
  np.testing.assert_allclose(pred[real], ITEM_MEANS[ids[real] - 1],
                             rtol=1e-5)


def assert_adapted_is_the_baseline(model, config, params, prior=PRIOR,
                                   mix=None, new_only=False, new_weight=1.0,
                                   least=1):
  """On each of 4 tasks, the adapted model's query predictions are the item
  means plus the shrunk mean residual of the support set (`prior`
  pseudo-ratings: the baseline's at the start; `mix=(share, prior2)`: that
  share of it and the rest shrunk by `prior2`; `new_only`: on the query
  rows of the item without training ratings alone; `new_weight`: the
  weight of a support row of that item in the mean, 0 where the support
  set holds fewer than `least` such rows)."""
  t = tasks()
  checked = 0
  adapt = jax.jit(lambda s: meta.adapt(model.loss_fn, params, s,
                                       config=config))
  for i in range(4):
    support = jax.tree.map(lambda a: a[i], t["support"])
    query = jax.tree.map(lambda a: a[i], t["query"])
    adapted = adapt(support)
    s_ids, mask = support["features"]["item_id"], support["mask"]
    new = mask & (COUNTS[s_ids - 1] == 0)
    weight = np.where(mask, np.where(new, new_weight if new.sum() >= least
                                     else 0.0, 1.0), 0.0)
    resid = weight * (support["rating"] - ITEM_MEANS[s_ids - 1])
    bias = resid.sum() / (weight.sum() + prior)
    if mix is not None:
      share, prior2 = mix
      bias = (share * bias
              + (1 - share) * resid.sum() / (weight.sum() + prior2))
    rows = query["mask"]
    if new_only:
      rows = rows & (COUNTS[query["features"]["item_id"] - 1] == 0)
      checked += int(rows.sum())
    q_ids = query["features"]["item_id"][rows]
    pred = np.asarray(model.predict(adapted, query["features"]))
    np.testing.assert_allclose(pred[rows], ITEM_MEANS[q_ids - 1] + bias,
                               rtol=1e-5)
  assert checked or not new_only


def test_one_inner_step_sets_the_user_bias_as_the_baseline_does():
  """Adapting the user bias alone for one step of `inner_lr` gives the
  baseline's shrunk mean residual, whatever the inner rate."""
  model, config = build(adapt=("^user_bias$",), inner_steps=1)
  params = model.init(jax.random.PRNGKey(0))
  assert_adapted_is_the_baseline(model, config, params)


def test_the_learned_prior_sets_the_shrinkage():
  """`user_prior` is the log of the pseudo-ratings: another value lands one
  step on the residual shrunk by it, still from any start."""
  model, config = build(adapt=("^user_bias$", "^base_bias$"),
                        inner_steps=1)
  params = model.init(jax.random.PRNGKey(0))
  np.testing.assert_allclose(float(params["user_prior"]), np.log(PRIOR),
                             rtol=1e-6)
  params = {**params, "user_prior": jax.numpy.log(10.0),
            "user_bias": jax.numpy.asarray(-0.4)}
  assert_adapted_is_the_baseline(model, config, params, prior=10.0)
  # Served at share 0 (every item here has training ratings but item 3)
  # it is the baseline's bias again, whatever the learned prior; at 0.5
  # the mean of the two.
  off = {**params, "share": np.asarray([0.0, 0.0], np.float32)}
  assert_adapted_is_the_baseline(model, config, off, prior=PRIOR)
  half = {**params, "share": np.asarray([0.5, 0.5], np.float32)}
  assert_adapted_is_the_baseline(model, config, half, prior=10.0,
                                 mix=(0.5, PRIOR))


def test_meta_training_learns_the_prior_and_not_the_user_bias_start():
  """The prior's meta-gradient flows through the adapted user bias. The
  bias's start is `meta_fixed` (the meta-step zeroes its gradient, see
  test_initial_candidate) so that the meta-parameters predict the item
  means: adapted on its own it lands on the shrunk residual from any
  start, and then its meta-gradient is rounding noise."""
  model, config = build(adapt=("^user_bias$", "^base_bias$"), inner_steps=1)
  assert model.meta_fixed == ("^user_bias$", "^base_bias$")
  params = model.init(jax.random.PRNGKey(0))
  grads = jax.jit(jax.grad(
      lambda p: meta.meta_loss(model.loss_fn, p, tasks(), config=config,
                               query_loss_fn=model.query_loss_fn)))(params)
  assert abs(float(grads["user_prior"])) > 1e-4
  for fixed in ("user_bias", "base_bias"):
    assert abs(float(grads[fixed])) < 1e-2 * abs(float(grads["user_prior"]))


def test_default_adaptation_moves_the_user_bias_and_the_interaction():
  model, config = build(inner_steps=2)
  params = model.init(jax.random.PRNGKey(0))
  t = tasks()
  loss, grads = jax.value_and_grad(
      lambda p: meta.meta_loss(model.loss_fn, p, t, config=config,
                               query_loss_fn=model.query_loss_fn))(params)
  assert np.isfinite(float(loss))
  if KIND != "melu":
    # The user vector adapts; every item vector (and the MLP's output)
    # starts at zero, so the model starts as the anchor, and
    # meta-training moves the item vectors.
    assert model.adapt == ("^user/", "^user_bias$", "^base_bias$")
    assert not np.asarray(params["item"]["id"]["embedding"]).any()
    if KIND == "idemb":
      assert np.asarray(grads["item"]["id"]["embedding"]).any()
    else:  # the output layer first (the item vectors' gradient passes it)
      assert not np.asarray(params["mlp"]["out"]["kernel"]).any()
      assert np.asarray(grads["mlp"]["out"]["kernel"]).any()
    return
  assert model.adapt == ("^decision/", "^user_bias$", "^base_bias$")
  # The network starts at zero through its output layer, not through a
  # closed gate (which would also scale the inner loop's steps down to
  # nothing), and meta-training moves both.
  out = params["decision"]["out"]["kernel"]
  assert float(params["gate"]) == 1.0 and not np.asarray(out).any()
  assert np.asarray(grads["decision"]["out"]["kernel"]).any()
  assert float(grads["gate"]) != 0.0


def test_before_training_share_zero_is_the_baseline_and_one_adapts_more():
  """With the default adaptation (decision MLP and user biases, 3 steps)
  at the start: served at share 0 the adapted model is the baseline
  exactly; at share 1 the inner loop has also fitted the network's output
  layer to the support set, so the predictions move away from it. (IDEmb's
  item vectors start at zero, so adapting its user vector moves nothing:
  before training it is the baseline at any share.)"""
  model, config = build(inner_steps=3)
  params = model.init(jax.random.PRNGKey(1))
  off = {**params, "share": np.zeros(2, np.float32)}
  assert_adapted_is_the_baseline(model, config, off)
  t = tasks()
  task = jax.tree.map(lambda a: a[0], t)
  served = meta.adapt(model.loss_fn, params, task["support"], config=config)
  baseline = meta.adapt(model.loss_fn, off, task["support"], config=config)
  real = task["query"]["mask"]
  moved = (np.asarray(model.predict(served, task["query"]["features"]))
           - np.asarray(model.predict(baseline, task["query"]["features"])))
  if KIND == "melu":
    assert np.abs(moved[real]).max() > 1e-3
  else:
    np.testing.assert_allclose(moved[real], 0.0, atol=1e-5)


def test_an_empty_support_set_keeps_the_meta_parameters():
  """No rating, no prior: the loss and its gradient are 0 (as every loss
  of the package), even where the meta-learned user bias is not 0."""
  model, config = build(inner_steps=2)
  params = model.init(jax.random.PRNGKey(0))
  params = {**params, "user_bias": jax.numpy.asarray(0.3)}
  support = jax.tree.map(lambda a: a[0], tasks()["support"])
  support = {**support, "mask": np.zeros_like(support["mask"])}
  adapted = meta.adapt(model.loss_fn, params, support, config=config)
  for a, b in zip(jax.tree.leaves(adapted), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def learned(params):
  """`params` with a learned part that moves every prediction: the gate
  open, a non-zero features' item bias and a moved global level."""
  params = jax.tree.map(lambda a: a, params)
  if "gate" in params:
    params["gate"] = np.float32(1.0)
  kernel = params["item_project"]["kernel"]
  params["item_project"]["kernel"] = np.full(kernel.shape, 0.3, np.float32)
  params["global_bias"] = params["global_bias"] + 0.2
  return params


def test_the_shares_scale_the_learned_part_per_kind_of_item():
  model, _ = build()
  params = learned(model.init(jax.random.PRNGKey(0)))
  t = tasks()
  features, real = t["query"]["features"], t["query"]["mask"]
  ids = features["item_id"][real]
  anchor = ITEM_MEANS[ids - 1]
  new = COUNTS[ids - 1] == 0  # item 3 has no training ratings
  assert new.any() and (~new).any()

  def predict(shares):
    p = dict(params, share=np.asarray(shares, np.float32))
    return np.asarray(model.predict(p, features))[real]

  trained = predict((1.0, 1.0))
  assert np.abs(trained - anchor).min() > 1e-3  # the learned part is there
  np.testing.assert_allclose(predict((0.0, 0.0)), anchor, rtol=1e-6)
  half_existing = predict((0.5, 0.0))
  np.testing.assert_allclose(half_existing[new], anchor[new], rtol=1e-6)
  np.testing.assert_allclose(half_existing[~new],
                             (anchor + 0.5 * (trained - anchor))[~new],
                             rtol=1e-5)
  only_new = predict((0.0, 1.0))
  np.testing.assert_allclose(only_new[~new], anchor[~new], rtol=1e-6)
  np.testing.assert_allclose(only_new[new], trained[new], rtol=1e-6)


def test_the_shares_take_no_gradient():
  model, config = build()
  params = learned(model.init(jax.random.PRNGKey(0)))
  t = tasks()
  task = jax.tree.map(lambda a: a[0], t)
  grads = jax.jit(jax.grad(
      lambda p: meta.task_loss(model.loss_fn, p, task, config=config,
                               query_loss_fn=model.query_loss_fn)))(params)
  assert np.all(np.asarray(grads["share"]) == 0.0)
  # the rest does learn
  assert np.abs(np.asarray(grads["global_bias"])) > 0
  if KIND == "melu":
    assert np.abs(np.asarray(grads["gate"])) > 0


def test_share_zero_serves_the_baseline_exactly_after_training():
  """A trained model (network open, features' item bias, moved global
  level, learned prior) served at share 0 adapts to exactly the baseline,
  also where only one kind of item is at 0: the baseline part has its own
  user bias, fitted to the baseline's residuals, not the model's."""
  model, config = build(inner_steps=3)
  params = learned(model.init(jax.random.PRNGKey(0)))
  params = {**params, "user_prior": jax.numpy.log(10.0)}
  off = {**params, "share": np.zeros(2, np.float32)}
  assert_adapted_is_the_baseline(model, config, off, prior=PRIOR)
  # Per kind of item: the new items' share at 0, the existing items' at 1
  # (the support sets' items): the new items get the baseline exactly.
  new_off = {**params, "share": np.asarray([1.0, 0.0], np.float32)}
  assert_adapted_is_the_baseline(model, config, new_off, prior=PRIOR,
                                 new_only=True)


def assert_takes_no_gradient(leaf, value, t, **build_kw):
  """A model built with `build_kw`, its learned part on and `leaf` at
  `value`: the task loss of the first task has no gradient to `leaf`."""
  model, config = build(**build_kw)
  params = {**learned(model.init(jax.random.PRNGKey(0))),
            leaf: np.float32(value)}
  task = jax.tree.map(lambda a: a[0], t)
  grads = jax.jit(jax.grad(
      lambda p: meta.task_loss(model.loss_fn, p, task, config=config,
                               query_loss_fn=model.query_loss_fn)))(params)
  assert float(grads[leaf]) == 0.0


def test_new_items_support_ratings_weigh_less_by_the_validated_prior():
  """`model.new_item_prior=validated`: a support rating of an item without
  training ratings weighs `1 / new_item_prior` in both user biases'
  shrunk means (one step still lands on them, here with a fraction of a
  rating in `n`); at 1 (as trained) it is the plain mean, and the
  multiple takes no gradient. A config without the key has no leaf."""
  assert "new_item_prior" not in build()[0].init(jax.random.PRNGKey(0))
  model, config = build(new_item_prior="validated",
                        adapt=("^user_bias$", "^base_bias$"), inner_steps=1)
  params = model.init(jax.random.PRNGKey(0))
  assert float(params["new_item_prior"]) == 1.0
  assert_adapted_is_the_baseline(model, config, params, new_only=True)
  t = tasks()
  assert ((COUNTS[t["support"]["features"]["item_id"] - 1] == 0)
          & t["support"]["mask"]).any(), "the tasks must rate the new item"
  for multiple in (4.0, 16.0):
    heavy = {**params, "new_item_prior": np.float32(multiple)}
    assert_adapted_is_the_baseline(model, config, heavy,
                                   new_weight=1 / multiple)
    off = {**heavy, "share": np.zeros(2, np.float32)}  # the baseline part
    assert_adapted_is_the_baseline(model, config, off,
                                   new_weight=1 / multiple)
  assert_takes_no_gradient("new_item_prior", 4.0, t,
                           new_item_prior="validated")


def test_too_few_new_items_support_ratings_do_not_move_the_user():
  """`model.new_item_min_support=validated`: a support set with fewer
  ratings of new items than the validated minimum leaves those ratings
  out of both user biases (down-weighted by the multiple where it has
  enough); at 1 (as trained) every rating counts, and the minimum takes
  no gradient. A config without the key has no leaf."""
  assert "new_item_min_support" not in build(
      new_item_prior="validated")[0].init(jax.random.PRNGKey(0))
  model, config = build(new_item_prior="validated",
                        new_item_min_support="validated",
                        adapt=("^user_bias$", "^base_bias$"), inner_steps=1)
  params = model.init(jax.random.PRNGKey(0))
  assert float(params["new_item_min_support"]) == 1.0
  assert_adapted_is_the_baseline(model, config, params)
  t = tasks()
  new_rows = ((COUNTS[t["support"]["features"]["item_id"] - 1] == 0)
              & t["support"]["mask"]).sum(axis=1)
  least = float(new_rows.max())  # some tasks have enough, some too few
  assert (new_rows < least).any() and (new_rows >= least).any(), new_rows
  for multiple in (1.0, 4.0):
    gated = {**params, "new_item_prior": np.float32(multiple),
             "new_item_min_support": np.float32(least)}
    assert_adapted_is_the_baseline(model, config, gated,
                                   new_weight=1 / multiple, least=least)
    off = {**gated, "share": np.zeros(2, np.float32)}  # the baseline part
    assert_adapted_is_the_baseline(model, config, off,
                                   new_weight=1 / multiple, least=least)
  assert_takes_no_gradient("new_item_min_support", 2.0, t,
                           new_item_prior="validated",
                           new_item_min_support="validated")


COLD_ALGORITHMS = (
    {"algorithm": "maml", "inner_steps": 2},
    {"algorithm": "fomaml", "inner_steps": 1},
    {"algorithm": "reptile", "inner_steps": 3},
    {"algorithm": "metasgd", "inner_steps": 1},
    {"algorithm": "mamlpp", "inner_steps": 2},
    {"algorithm": "maml", "inner_steps": 2, "inner_optimizer": "adam"},
    {"algorithm": "maml", "inner_steps": 2, "inner_optimizer": "momentum"})


# Plain MAML with each kind of model; the other algorithms and inner
# optimizers each with one kind in turn (what they do with `warm` is the
# anchor's, shared by every kind): 9 cases rather than every algorithm
# with every kind (21), for the suite's time.
COLD_CASES = ([(kind, COLD_ALGORITHMS[0]) for kind in sorted(KINDS)]
              + [(sorted(KINDS)[i % len(KINDS)], algorithm)
                 for i, algorithm in enumerate(COLD_ALGORITHMS[1:])])


@pytest.mark.parametrize(
    "kind, algorithm", COLD_CASES, indirect=["kind"],
    ids=[f"{k}-" + "-".join(map(str, a.values())) for k, a in COLD_CASES])
def test_a_user_without_ratings_is_served_the_cold_shares(kind, algorithm):
  """`model.cold_share=validated`: the meta-parameters (a user without
  ratings) predict at the cold shares, an adapted user at the shares,
  whatever the algorithm or inner optimizer; an empty support set keeps
  `warm` at 0 (the cold shares)."""
  model, config = build(cold_share="validated", **algorithm)
  assert "^warm$" in model.meta_fixed and "^warm$" in model.adapt
  params = learned(model.init(jax.random.PRNGKey(0)))
  inner = meta.init_inner(params, config=config)
  assert float(params["warm"]) == 0.0
  t = tasks()
  features, real = t["query"]["features"], t["query"]["mask"]
  anchor = ITEM_MEANS[features["item_id"][real] - 1]
  cold = {**params, "cold_share": np.zeros(2, np.float32)}
  np.testing.assert_allclose(
      np.asarray(model.predict(cold, features))[real], anchor, rtol=1e-6)
  trained = np.asarray(model.predict(params, features))[real]
  assert np.abs(trained - anchor).min() > 1e-3  # the learned part serves
  adapt = jax.jit(lambda p, s: meta.adapt(model.loss_fn, p, s,
                                          config=config, inner=inner))
  for i in range(4):
    support = jax.tree.map(lambda a: a[i], t["support"])
    query = jax.tree.map(lambda a: a[i], t["query"])
    warm = adapt(cold, support)
    assert float(warm["warm"]) != 0.0
    same = adapt(params, support)  # cold shares 1: what is adapted is equal
    np.testing.assert_array_equal(
        np.asarray(model.predict(warm, query["features"])),
        np.asarray(model.predict(same, query["features"])))
    empty = {**support, "mask": np.zeros_like(support["mask"])}
    kept = adapt(cold, empty)
    assert float(kept["warm"]) == 0.0
    np.testing.assert_allclose(
        np.asarray(model.predict(kept, query["features"]))[query["mask"]],
        ITEM_MEANS[query["features"]["item_id"][query["mask"]] - 1],
        rtol=1e-6)
  task = jax.tree.map(lambda a: a[0], t)
  grads = jax.jit(jax.grad(lambda p: meta.task_loss(
      model.loss_fn, p, task, config=config, inner=inner,
      query_loss_fn=model.query_loss_fn)))(
          {**params, "cold_share": np.full(2, 0.5, np.float32)})
  assert not np.asarray(grads["cold_share"]).any()
  assert float(grads["warm"]) == 0.0 and float(grads["global_bias"]) != 0
  assert "warm" not in build()[0].init(jax.random.PRNGKey(0))


def test_ratings_left_out_of_the_user_biases_leave_the_user_cold():
  """A support set whose every rating is left out (fewer new items' ratings
  than the validated minimum) moves nothing, `warm` included: the user is
  served as one without ratings."""
  model, config = build(new_item_prior="validated",
                        new_item_min_support="validated",
                        cold_share="validated", inner_steps=2)
  params = model.init(jax.random.PRNGKey(0))
  support = jax.tree.map(lambda a: a[0], tasks()["support"])
  new_item = 1 + int(np.flatnonzero(COUNTS == 0)[0])
  support["features"]["item_id"] = np.where(support["mask"], new_item, 0)
  n = int(support["mask"].sum())
  adapt = jax.jit(lambda p: meta.adapt(model.loss_fn, p, support,
                                       config=config))
  for least, moved in ((n + 1, False), (n, True)):
    gated = {**params, "new_item_min_support": np.float32(least)}
    adapted = adapt(gated)
    assert (float(adapted["warm"]) != 0.0) == moved


def test_fewer_ratings_than_the_warm_minimum_leave_the_user_cold():
  """`model.warm_min_support=validated`: a support set with fewer ratings
  that count than the validated minimum moves nothing (the network, the
  biases, `warm`; the support's listwise term, on here, too): the user is
  served the meta-parameters at the cold shares; from the minimum on it
  adapts. Ratings of new items that their own minimum leaves out do not
  count towards it. At 1 (as trained) every rating counts; the minimum
  takes no gradient; a config without the key has no leaf."""
  assert "warm_min_support" not in build()[0].init(jax.random.PRNGKey(0))
  model, config = build(new_item_prior="validated",
                        new_item_min_support="validated",
                        warm_min_support="validated",
                        cold_share="validated",
                        support_rank_weight=0.5, inner_steps=2)
  params = learned(model.init(jax.random.PRNGKey(0)))
  assert float(params["warm_min_support"]) == 1.0
  params = {**params, "cold_share": np.full(2, 0.5, np.float32)}
  t = tasks()
  support = jax.tree.map(lambda a: a[0], t["support"])
  query = jax.tree.map(lambda a: a[0], t["query"])
  unadapted = np.asarray(model.predict(params, query["features"]))
  ids = support["features"]["item_id"]
  new = (COUNTS[ids - 1] == 0) & support["mask"]
  n, n_new = int(support["mask"].sum()), int(new.sum())
  assert 0 < n_new < n, (n, n_new)
  adapt = jax.jit(lambda p: meta.adapt(model.loss_fn, p, support,
                                       config=config))
  for least, new_least, moved in ((n + 1, 1, False), (n, 1, True),
                                  (n, n_new + 1, False),
                                  (n - n_new, n_new + 1, True)):
    gated = {**params, "warm_min_support": np.float32(least),
             "new_item_min_support": np.float32(new_least)}
    adapted = adapt(gated)
    served = np.asarray(model.predict(adapted, query["features"]))
    assert (float(adapted["warm"]) != 0.0) == moved, (least, new_least)
    if moved:
      assert np.abs(served - unadapted)[query["mask"]].max() > 1e-4
    else:
      np.testing.assert_array_equal(served, unadapted)
  assert_takes_no_gradient("warm_min_support", 2.0, t,
                           warm_min_support="validated")


def test_the_baseline_part_keeps_the_baselines_prior():
  """`model.user_bias_prior` starts the model's prior only: the baseline
  part shrinks with the baseline's own pseudo-ratings (3). (The biases
  adapt alone here: the network would add its own fit at share 1.)"""
  model, config = build(prior=10.0, adapt=("^user_bias$", "^base_bias$"),
                        inner_steps=1)
  params = model.init(jax.random.PRNGKey(0))
  np.testing.assert_allclose(float(params["user_prior"]), np.log(10.0),
                             rtol=1e-6)
  served = {**params, "share": np.asarray([1.0, 1.0], np.float32)}
  assert_adapted_is_the_baseline(model, config, served, prior=10.0)
  off = {**params, "share": np.zeros(2, np.float32)}
  assert_adapted_is_the_baseline(model, config, off, prior=PRIOR)


def test_the_median_map_changes_what_is_served_not_what_is_fitted():
  """`model.calibration=median`: `predict` serves `p + interp(p, knots,
  offsets)` of the row's kind of item; the losses (hence adaptation and
  the meta-gradient) see `p` itself, and the map takes no gradient."""
  model, config = build()
  params = learned(model.init(jax.random.PRNGKey(0)))
  t = tasks()
  features, real = t["query"]["features"], t["query"]["mask"]
  new = COUNTS[features["item_id"][real] - 1] == 0
  plain = np.asarray(model.predict(params, features))[real]
  at = np.linspace(1.0, 5.0, 41, dtype=np.float32)
  offsets = np.stack([0.3 * np.sin(at), -0.2 * np.ones_like(at)])
  mapped = {**params, "median_knots": at,
            "median_offsets": offsets.astype(np.float32)}
  served = np.asarray(model.predict(mapped, features))[real]
  expected = np.where(new, plain + np.interp(plain, at, offsets[1]),
                      plain + np.interp(plain, at, offsets[0]))
  np.testing.assert_allclose(served, expected, rtol=1e-5)
  task = jax.tree.map(lambda a: a[0], t)

  def loss(p):
    return meta.task_loss(model.loss_fn, p, task, config=config,
                          query_loss_fn=model.query_loss_fn)

  np.testing.assert_allclose(float(loss(mapped)), float(loss(params)),
                             rtol=1e-6)
  grads = jax.jit(jax.grad(loss))(mapped)
  assert not np.asarray(grads["median_offsets"]).any()
  assert not np.asarray(grads["median_knots"]).any()


def test_the_median_map_is_off_with_calibration_none():
  cfg = model_section({**KINDS[KIND], "anchor": True, "anchor_version": 2,
                       "calibration": "none", "embed_dim": 4,
                       "hidden": (8,)})
  model = models.build(cfg, FIELDS, rating_mean=MU,
                       item_means=(ITEM_MEANS, COUNTS / (COUNTS + 5.0)),
                       inner_lr=0.1)
  params = model.init(jax.random.PRNGKey(0))
  assert "median_offsets" not in params and "share" in params


@pytest.mark.parametrize("losses", [{"loss": "bce"},
                                    {"query_loss": "softmax"}])
def test_a_ranking_loss_is_refused_as_the_model_is_built(losses):
  """It was built, and its first support loss raised "model.loss must be
  one of mse, huber, bce, bpr, softmax, got 'bce'" from inside a trace."""
  cfg = model_section({**KINDS[KIND], "anchor": True, "anchor_version": 2,
                       "embed_dim": 4, "hidden": (8,), **losses})
  with pytest.raises(ValueError, match="is a loss of implicit feedback, and"
                     " the baseline-anchored models"):
    models.build(cfg, FIELDS, rating_mean=MU,
                 item_means=(ITEM_MEANS, COUNTS / (COUNTS + 5.0)),
                 inner_lr=0.1)
