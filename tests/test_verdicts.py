"""Warnings of `metarec train` and `eval`: the model lost, too few tasks;
checkpoint selection by validation MAE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import config_path
from metarec_jax import config_io
from metarec_jax.eval import verdicts
from metarec_jax.workdir import checkpoint as ckpt_lib


def scenario(mae, baseline, tasks=200):
  return {"mae": mae, "tasks": tasks,
          "baselines": {"item_mean_user_bias": {"mae": baseline},
                        "global_mean": {"mae": 1.0}}}


def test_warns_when_the_model_loses_to_the_baseline():
  lines = verdicts.warnings_for({"W": scenario(0.8263, 0.7847),
                                 "UC": scenario(0.70, 0.74)})
  assert len(lines) == 1
  assert lines[0].startswith("W: the model's query MAE 0.8263 is WORSE than"
                             " the item-mean + user-bias baseline's 0.7847"
                             " (+5.3%)")
  assert "try:" in lines[0]


def test_a_loss_of_more_than_the_tie_margin_warns_and_a_tie_does_not():
  assert verdicts.warnings_for({"W": scenario(0.4692, 0.4691)}) == []
  lines = verdicts.warnings_for({"W": scenario(0.7858, 0.7847)})
  assert len(lines) == 1 and "(+0.1%)" in lines[0]


def test_quiet_when_the_model_wins_and_on_empty_scenarios():
  assert verdicts.warnings_for({
      "W": scenario(0.70, 0.73), "UC": scenario(0.71, 0.74),
      "IC": {"mae": None, "tasks": 0, "baselines": {
          "item_mean_user_bias": {"mae": None}}}}) == []


def test_warns_when_the_meta_parameters_lose_to_the_global_mean():
  """What a user without ratings is served: the one-pass learners' empty
  support gave an MAE 39% above the global mean's, without a word."""
  loser = {**scenario(0.70, 0.74), "mae_unadapted": 1.0520}
  lines = verdicts.warnings_for({"W": loser})
  assert len(lines) == 1
  assert lines[0].startswith("W: before adaptation the model's query MAE"
                             " 1.0520 is WORSE than the global mean's 1.0000"
                             " (+5.2%); every user without ratings")
  assert "model.anchor=true" in lines[0]
  assert "model.cold_blend=validated" in lines[0]  # a plain model's fix
  for quiet in (0.95, 1.0005, None):  # better, a tie, not measured
    assert verdicts.warnings_for(
        {"W": {**scenario(0.70, 0.74), "mae_unadapted": quiet}}) == []
  # Said of an anchored model too, whose learned part moves the item means
  # before any rating (MovieLens-1M's ratings alone with model.id_init=svd:
  # 1.0143 against 0.9538), with advice of its own: cold shares where the
  # run serves users without ratings the adapted users' share (configs
  # from before model.cold_share), else more validation users.
  def advice(**model):
    config = config_io.complete({"model": {"anchor": True, **model}}).model
    lines = verdicts.warnings_for({"W": loser}, model_config=config)
    assert len(lines) == 1 and "every user without ratings" in lines[0]
    assert "model.anchor=true" not in lines[0]
    return lines[0].split("try: ")[1]
  for same in ({"name": "melu", "id_init": "svd"},
               {"name": "idemb", "anchor_version": 2, "cold_share": "same"}):
    assert advice(**same).startswith("model.cold_share=validated")
  for other in ({"name": "melu", "id_init": "svd", "cold_share": "validated"},
                {"name": "idemb", "anchor_version": 2,
                 "cold_share": "validated"}):
    assert advice(**other) == "more validation users (eval.val_fraction)"
  # Too few tasks: no advice, the gap is noise.
  anchored = config_io.complete({"model": {"anchor": True}}).model
  few = {**loser, "tasks": 20}
  assert verdicts.warnings_for({"W": few}, model_config=anchored)[-1].endswith(
      "too few to tell it from noise")


def test_warns_about_too_few_tasks():
  lines = verdicts.warnings_for({"IC": scenario(0.8, 0.9, tasks=6),
                                 "UIC": scenario(0.9, 0.8, tasks=1)})
  assert lines[0] == ("IC: only 6 task(s) (fewer than 50): its metrics are"
                      " too noisy to compare models")
  assert lines[1].startswith("UIC: only 1 task(s)")
  assert lines[2].startswith("UIC: the model's query MAE 0.9000 is WORSE")
  # On so few tasks no config change is advised: the gap is noise.
  assert lines[2].endswith("on 1 task(s), too few to tell it from noise")
  assert "try:" not in lines[2]


def test_new_items_without_a_task_are_warned_about():
  # New items whose ratings make no task (too few per user, or the wrong
  # new-item column) were passed in silence: an empty scenario says nothing.
  empty = {"mae": None, "tasks": 0}
  results = {"W": scenario(0.70, 0.73), "UC": scenario(0.71, 0.74),
             "IC": empty, "UIC": empty}
  assert verdicts.no_new_item_tasks(results, np.zeros(5, bool)) is None
  assert verdicts.no_new_item_tasks(
      results, np.array([True, False, True])) == (
          "IC, UIC: no task, though 2 items are new: no user has"
          " eval.min_ratings to eval.max_ratings ratings of new items, so"
          " nothing measures them")
  # A generic file's named column is asked about; MovieLens and synthetic
  # data have none (the question pointed at nothing there).
  assert verdicts.no_new_item_tasks(
      results, np.array([True]), column="first_seen").endswith(
          "nothing measures them (is data.generic.new_item_col='first_seen'"
          " the column meant?)")
  results["UIC"] = scenario(0.8, 0.9, tasks=3)
  assert verdicts.no_new_item_tasks(results, np.ones(2, bool)) is None


def test_existing_items_without_a_task_are_warned_about_with_the_cause():
  """20 users of about 150 ratings each: every one above eval.max_ratings,
  W and UC were empty and nothing said so (helper T)."""
  empty = {"mae": None, "tasks": 0}
  results = {"W": empty, "UC": empty, "IC": scenario(0.9, 0.95, tasks=11),
             "UIC": empty}
  counts = lambda: np.array([0, 150, 112, 140, 5])
  assert verdicts.no_existing_item_tasks(results, counts, (13, 100)) == (
      "W, UC: no task: no user has 13 to 100 ratings of existing items"
      " (eval.min_ratings, eval.max_ratings), so nothing measures them; 3"
      " users have more (up to 150): raise eval.max_ratings")
  assert verdicts.no_existing_item_tasks(
      results, lambda: np.array([3, 5, 200]), (13, 100)).endswith(
          "; 2 users have fewer: lower eval.min_ratings, or give the data"
          " users with more ratings")
  # A file's users are new: only UC could have had tasks.
  assert verdicts.no_existing_item_tasks(results, None, (13, 100),
                                         "f.csv").startswith(
      "UC: no task: no user of f.csv has 13 to 100 ratings")
  results["UC"] = scenario(0.7, 0.8, tasks=2)
  assert verdicts.no_existing_item_tasks(results, counts, (13, 100)) is None
  # ... and where the warning is not due, the counts are never computed.
  assert verdicts.no_existing_item_tasks(results, lambda: 1 / 0,
                                         (13, 100)) is None


def test_an_anchored_model_that_loses_is_advised_for_what_it_validates():
  model = config_io.load_config_file(config_path("default")).model
  assert model.anchor
  anchored, = verdicts.warnings_for({"W": scenario(0.80, 0.75)},
                                    model_config=model)
  model.anchor = False
  plain, = verdicts.warnings_for({"W": scenario(0.80, 0.75)},
                                 model_config=model)
  assert "model.anchor=true" in plain
  # It is anchored already: what to try is what its validation fits.
  assert "model.anchor" not in anchored
  assert "eval.val_fraction" in anchored and "try:" in anchored


def test_warns_when_the_model_orders_items_worse_than_the_baseline():
  # Lower MAE, worse order: what a 0/1 rating scale gave.
  w = scenario(0.2707, 0.3290)
  w["ndcg@3"] = 0.7919
  w["baselines"]["item_mean_user_bias"]["ndcg@3"] = 0.8477
  uc = scenario(0.70, 0.74)
  uc["ndcg@3"] = 0.7883
  uc["baselines"]["item_mean_user_bias"]["ndcg@3"] = 0.7637
  line, = verdicts.warnings_for({"W": w, "UC": uc})
  assert line.startswith("W: the model orders the query items WORSE than the"
                         " item-mean + user-bias baseline (ndcg@3 0.7919"
                         " against 0.8477, -6.6%); try:")
  assert "model.query_rank_weight" in line
  assert "data.implicit.enabled=true" in line
  # What the config does already is not advised; a tie says nothing.
  model = config_io.load_config_file(config_path("default")).model
  model.query_rank_weight = 20.0
  line, = verdicts.warnings_for({"W": w}, model_config=model)
  assert "model.query_rank_weight" not in line
  # The 0/1 tip only where the scale is not known to be another.
  line, = verdicts.warnings_for({"W": w}, model_config=model,
                                rating_range=(0.0, 1.0))
  assert "data.implicit.threshold=1" in line
  line, = verdicts.warnings_for({"W": w}, model_config=model,
                                rating_range=(1.0, 5.0))
  assert "data.implicit" not in line
  assert "another model.query_rank_weight" in line
  w["ndcg@3"] = 0.8477 * (1 - verdicts.RANKING_TIE / 2)
  assert verdicts.warnings_for({"W": w}) == []


def test_an_order_gap_within_twice_its_standard_error_is_noise():
  """Ratings drawn at random (nothing to order), 181 tasks: nDCG@3 0.6003
  against the baseline's 0.6083 warned, with a per-task gap's standard
  error of 0.019."""
  uic = scenario(0.8873, 1.0051, tasks=181)
  uic["ndcg@3"] = 0.6003
  uic["baselines"]["item_mean_user_bias"]["ndcg@3"] = 0.6083
  uic["ndcg@3_gap_se"] = 0.019
  assert verdicts.warnings_for({"UIC": uic}) == []
  uic["ndcg@3_gap_se"] = 0.003  # a gap of 2.7 errors: beyond noise
  line, = verdicts.warnings_for({"UIC": uic})
  assert line.startswith("UIC: the model orders the query items WORSE")


def test_the_support_curve_warns_where_few_ratings_lose_beyond_noise():
  """A run that wins at full support can serve the users cut to one or
  two ratings worse than the baseline (helper E's new users: 0.733 against
  0.717 at k=1, on 60 tasks), and eval said nothing."""
  def record(se, tasks=60):
    return {"scenarios": {"UC": {
        "k": [1, 2, 4], "tasks": [tasks] * 3, "mae": [0.733, 0.714, 0.650],
        "item_mean_user_bias": [0.717, 0.700, 0.690],
        "mae_gap_se": [se, se, se]}}}
  line, = verdicts.curve_warnings(record(0.004))
  assert line.startswith("UC: cut to 1, 2 support rating(s), the model's"
                         " query MAE is WORSE than the item-mean + user-bias"
                         " baseline's (0.7330 against 0.7170 at 1, 60 tasks;")
  assert "try:" in line
  assert verdicts.curve_warnings(record(0.009)) == []  # within 2 errors
  assert verdicts.curve_warnings(record(0.004, tasks=40)) == []  # too few
  assert verdicts.curve_warnings(None) == []  # (no curve written)
  # An implicit curve without nDCG@10: nothing to say here.
  assert verdicts.curve_warnings({"scenarios": {"UC": {
      "k": [1], "tasks": [60], "hr@10": [0.1]}}}) == []


def test_an_implicit_support_curve_warns_where_few_clicks_lose_beyond_noise():
  """Users cut to one or two clicks ranked worse than popularity (helper
  I: -10.6% and -5.7% nDCG@10 in eval's own curve, beyond the rule eval
  warns by at full support), and no warning: the curve's check read only
  MAE fields, and the implicit curve recorded no standard error."""
  def record(se, tasks=300):
    return {"scenarios": {"UC": {
        "k": [1, 2, 4], "tasks": [tasks] * 3,
        "ndcg@10": [0.200, 0.210, 0.250],
        "popularity_ndcg@10": [0.224, 0.223, 0.224],
        "popularity_gap_se": [se, se, se]}}}
  line, = verdicts.curve_warnings(record(0.005))
  assert line.startswith(
      "UC: cut to 1, 2 support interaction(s), the model's full-catalog"
      " ndcg@10 is WORSE than the most-popular ranking's (0.2000 against"
      " 0.2240 at 1, 300 tasks;"), line
  assert "try:" in line
  assert verdicts.curve_warnings(record(0.013)) == []  # within 2 errors
  assert verdicts.curve_warnings(record(0.005, tasks=40)) == []  # too few
  assert verdicts.curve_warnings(record(None)) == []  # (older records)
  # New items: popularity ties random (no training positives); said so,
  # with what ranks new items, not the popularity tips (reviewer R2).
  tied = record(0.005)
  tied["scenarios"]["UC"]["random_ndcg@10"] = tied["scenarios"]["UC"][
      "popularity_ndcg@10"]
  line, = verdicts.curve_warnings(tied)
  assert "WORSE than a random ranking's (0.2000 against 0.2240" in line
  assert line.endswith(verdicts.NEW_ITEMS_ADVICE)


def implicit(ndcg, popularity, tasks=200):
  full = {"hr@10": 0.5, "ndcg@10": ndcg}
  return {"mae": None, "tasks": tasks, "baselines": {
      "item_mean_user_bias": {"mae": None}}, "ranking": {
          "full": full, "sampled": full, "baselines": {
              "popularity": {"full": {"ndcg@10": popularity},
                             "sampled": {"ndcg@10": 0.9}},
              "random": {"full": {"ndcg@10": 0.01}}}}}


def test_implicit_feedback_warns_when_popularity_ranks_better():
  line, = verdicts.warnings_for({"W": implicit(0.1343, 0.2850),
                                 "UC": implicit(0.179, 0.112)})
  assert line.startswith("W: the model's full-catalog ndcg@10 0.1343 is"
                         " WORSE than the most-popular ranking's 0.2850"
                         " (-52.9%) on the same tasks; try:")
  assert "model.loss=bce" in line and "model.item_id=true" in line
  # What the model already does is not advised.
  model = config_io.load_config_file(config_path("default")).model
  model.loss, model.item_id = "bce", True
  line, = verdicts.warnings_for({"W": implicit(0.1343, 0.2850)},
                                model_config=model)
  assert line.endswith("try: more meta-steps (train.num_steps)")
  # IDEmb embeds every item's id: model.item_id is MeLU's.
  model.name, model.item_id = "idemb", False
  line, = verdicts.warnings_for({"W": implicit(0.1343, 0.2850)},
                                model_config=model)
  assert line.endswith("try: more meta-steps (train.num_steps)")
  assert verdicts.warnings_for({"W": implicit(0.2849, 0.2850)}) == []  # tie
  # Where popularity ranks as the random baseline (new items), it says so.
  ic = implicit(0.1343, 0.2850)
  ic["ranking"]["baselines"]["random"] = ic["ranking"]["baselines"][
      "popularity"]
  line, = verdicts.warnings_for({"IC": ic})
  assert line.startswith("IC: the model's full-catalog ndcg@10 0.1343 is"
                         " WORSE than a random ranking's (no candidate has a"
                         " training positive to rank by popularity) 0.2850")
  # Tasks whose candidates were their positives alone are counted.
  w = implicit(0.2849, 0.2850)
  w["ranking"]["unranked"] = {"full": 13, "sampled": 20}
  line, = verdicts.warnings_for({"W": w})
  assert line.startswith("W: task(s) left out, 13 of 200 from the full"
                         " ranking's metrics and 20 of 200 from the sampled"
                         " ranking's metrics: their candidates there are"
                         " their held-out positives alone")
  w["ranking"]["unranked"] = {"full": 0, "sampled": 0}
  assert verdicts.warnings_for({"W": w}) == []
  few = verdicts.warnings_for({"UIC": implicit(0.1, 0.2, tasks=7)})
  assert few[0].startswith("UIC: only 7 task(s)")
  assert few[1].endswith("too few to tell it from noise")


def test_a_ranking_loss_within_twice_its_standard_error_is_noise():
  """At a random ranking's nDCG@10 of 0.014, one draw of the users moved
  it by 50%: shop_new's IC warned "-34.7%" with the gap 1.4 standard
  errors, and advised item ids, which new items do not have."""
  ic = implicit(0.0096, 0.0148, tasks=210)
  ic["ranking"]["baselines"]["random"] = ic["ranking"]["baselines"][
      "popularity"]
  ic["ranking"]["popularity_gap_se"] = 0.0036
  assert verdicts.warnings_for({"IC": ic}) == []
  ic["ranking"]["popularity_gap_se"] = 0.0020  # 2.6 standard errors
  line, = verdicts.warnings_for({"IC": ic})
  assert line.endswith("; " + verdicts.NEW_ITEMS_ADVICE)
  assert "model.item_id" not in line and "num_steps" not in line


def test_the_best_validated_checkpoint_is_kept_and_found(tmp_path):
  """keep=1 keeps the newest and, beside it, the lowest validation MAE;
  checkpoints without a validation MAE never count as best."""
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=1, async_save=False)
  state = {"params": {"w": jnp.zeros(2)}}
  for step, mae in ((1, 0.9), (2, 0.5), (3, None), (4, 0.7), (5, None)):
    ckpt.save(step, state, {"x": 1}, val_mae=mae)
  ckpt.wait()
  assert ckpt.steps() == [2, 5]
  assert ckpt.best() == (2, pytest.approx(0.5))
  ckpt.close()
  reader = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  assert reader.best() == (2, pytest.approx(0.5))
  assert reader.validated() == {2: pytest.approx(0.5)}  # 5 has no MAE
  reader.close()
  # No validated checkpoint: no best (eval then takes the newest).
  other = ckpt_lib.Checkpointer(str(tmp_path / "b"), keep=2,
                                async_save=False)
  other.save(1, state, {"x": 1})
  other.wait()
  assert other.best() is None
  other.close()


def test_a_checkpoint_of_other_parameters_is_named_as_such(tmp_path):
  """E.g. an anchored run saved before the validated shares existed, or
  `eval --config.model.calibration=none` on a run with the map: a problem
  of the config, so no fallback to an older step (of the same model) and
  nothing moved aside (it was a `DamagedCheckpoint`)."""
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2, async_save=False)
  for step in (1, 2):
    ckpt.save(step, {"params": {"w": jnp.zeros(2)}}, {"x": 1})
  ckpt.close()
  for read_only in (True, False):
    reader = ckpt_lib.Checkpointer(str(tmp_path), read_only=read_only)
    abstract = {"params": {"w": jax.ShapeDtypeStruct((2,), jnp.float32),
                           "share": jax.ShapeDtypeStruct((2,), jnp.float32)}}
    for step in (1, None):
      with pytest.raises(ckpt_lib.OtherModel,
                         match="parameters of another model [(]the model has"
                         " share;") as e:
        reader.restore(abstract, step)
      assert e.value.diff == "the model has share"
    assert reader.steps() == [1, 2]
    reader.close()


def test_a_checkpoint_of_other_shapes_names_the_leaf_before_reading(
    tmp_path):
  """E.g. `eval --config.model.embed_dim=4` on a run of 8: orbax's own
  error named no leaf, said to read another --step (every step is of the
  same model), and in one run of eight the reads it abandoned printed
  ~1,600 lines of tracebacks after the one-line error."""
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2, async_save=False)
  for step in (1, 2):
    ckpt.save(step, {"params": {"w": jnp.zeros((2, 8))}}, {"x": 1})
  ckpt.close()
  reader = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  abstract = {"params": {"w": jax.ShapeDtypeStruct((2, 4), jnp.float32)}}
  for step in (1, None):  # asked for, or the newest: no fallback either
    with pytest.raises(ckpt_lib.OtherModel) as e:
      reader.restore(abstract, step)
    assert str(e.value) == (
        f"the checkpoint of step {step or 2} holds parameters of other"
        " shapes than this config's model (w is (2, 8) there, (2, 4)"
        " here): use the config it was trained with")
  assert reader.steps() == [1, 2]  # none moved aside
  reader.close()
