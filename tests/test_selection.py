"""Checkpoint selection and early stopping (`train.selection`)."""

from metarec_jax.train.selection import Selection


def test_the_start_is_kept_but_is_no_bar_for_the_patience():
  s = Selection(patience=2)
  assert s.start(0.70)  # the anchored start: the baseline
  # Training validates worse than the start at first, but improves on its
  # own best each time: no early stop, and nothing beats the start yet.
  assert [s.update(m) for m in (0.80, 0.75, 0.72)] == [False, False, False]
  assert not s.should_stop and s.best == 0.70
  assert s.update(0.69) and s.best == 0.69  # now training wins
  assert [s.update(m) for m in (0.695, 0.70)] == [False, False]
  assert s.should_stop and s.stale == 2


def test_no_patience_never_stops_and_a_resume_keeps_the_best():
  s = Selection(patience=0)
  for m in (0.9, 1.0, 1.1, 1.2):
    s.update(m)
  assert not s.should_stop and s.best == 0.9 and s.stale == 3
  resumed = Selection.resumed(3, {200: 0.5, 400: 0.55})
  assert not resumed.update(0.6) and resumed.stale == 1
  assert Selection.resumed(3, {}).update(2.0)


def test_a_resume_whose_best_is_the_start_counts_patience_from_training():
  # Kept: the start (the best) and a worse trained step.
  resumed = Selection.resumed(1, {0: 0.70, 500: 0.80})
  assert resumed.best == 0.70 and resumed.trained == 0.80
  # Better than training's own best, not than the start: no stop.
  assert not resumed.update(0.75) and not resumed.should_stop
  assert not resumed.update(0.76) and resumed.should_stop
  # Only the start kept: any trained validation is training's first.
  only_start = Selection.resumed(1, {0: 0.70})
  assert not only_start.update(0.9) and not only_start.should_stop


def test_a_tie_keeps_the_later_step_but_is_no_improvement_for_the_patience():
  """Served as the baseline (share 0), validations tie the start exactly:
  the later step is kept (its shares were fitted on more training), as
  the checkpointer's `best` picks it, and the patience still runs out."""
  s = Selection(patience=2)
  assert s.start(0.70)
  assert s.update(0.70) and s.stale == 0  # the first trained validation
  assert s.update(0.70) and s.stale == 1
  assert s.update(0.70) and s.should_stop


def test_the_checkpointer_takes_the_latest_of_equal_maes(tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  writer = ckpt_lib.Checkpointer(str(tmp_path))
  state = {"w": jnp.ones(3)}
  for step, mae in ((0, 0.70), (10, 0.75), (20, 0.70), (30, 0.72)):
    writer.save(step, state, {}, val_mae=mae)
  writer.close()
  reader = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  assert reader.best() == (20, 0.70)
  reader.close()


def test_the_criterion_of_what_is_served():
  """`train.select_on=served`: the median map's cross-fitted MAE where
  validation serves the map, else the model's; rankings as before."""
  from metarec_jax.workdir.criterion import criterion  # pylint: disable=g-import-not-at-top
  val = {"mae": 0.3344}
  assert criterion(val) == 0.3344  # `model`
  served = {"val/median_map": 1.0, "val/median_map_mae": 0.2563}
  assert criterion(val, served) == 0.2563
  assert criterion(val, {**served, "val/median_map": 0.0}) == 0.3344
  assert criterion({"ranking": {"full": {"ndcg@10": 0.25}}}, served) == 0.75


def test_a_non_finite_validation_is_never_the_best(tmp_path):
  """A NaN validation MAE saved with a step (by this version, or written
  by an older one) was taken for the best by `eval`, and beside it orbax's
  keeping deleted the best validated checkpoint; now it counts as not
  validated."""
  import math  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  state = {"w": jnp.ones(3)}
  writer = ckpt_lib.Checkpointer(str(tmp_path), keep=3, async_save=False)
  for step, mae in ((0, 0.7), (3, math.nan), (6, 0.9)):
    writer.save(step, state, {}, val_mae=mae)
  writer.close()
  assert not (tmp_path / "checkpoints" / "3" / "metrics").exists()
  (tmp_path / "checkpoints" / "6" / "metrics" / "metrics").write_text(
      '{"val_mae": 0.5}')
  (tmp_path / "checkpoints" / "0" / "metrics" / "metrics").write_text(
      '{"val_mae": NaN}')
  reader = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  assert reader.validated() == {6: 0.5}
  assert reader.best() == (6, 0.5)
  reader.close()
  writer = ckpt_lib.Checkpointer(str(tmp_path), keep=1, async_save=False)
  writer.save(9, state, {}, val_mae=0.8)
  writer.close()
  assert writer.steps() == [6, 9]  # the best and the newest


def test_eval_calls_a_never_validated_checkpoints_values_starting(tmp_path):
  """A run trained with train.eval_every_steps=-1: eval said "using the
  newest checkpoint (none was validated)", then called the untested
  starting shares "its validated shares"."""
  from cli_run import metarec_here  # pylint: disable=g-import-not-at-top
  from conftest import config_path  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  out = metarec_here("train", f"--config={config_path('tiny')}",
                     f"--workdir={workdir}", "--config.train.num_steps=2",
                     "--config.train.eval_every_steps=-1")
  assert out.returncode == 0, out.stderr
  out = metarec_here("eval", f"--workdir={workdir}", "--nosupport_curve")
  assert out.returncode == 0, out.stderr
  assert "(its starting shares; the checkpoint was never validated)" in (
      out.stderr), out.stderr
  assert "validated shares" not in out.stderr


def test_the_log_names_the_served_mae_that_selects_checkpoints(tmp_path):
  """With train.select_on=served, the log's "validation MAE" was not the
  MAE that selects checkpoints: eval then chose a step by a number the
  log never showed (0.5851 against a logged 0.6923)."""
  import re  # pylint: disable=g-import-not-at-top
  from cli_run import metarec_here  # pylint: disable=g-import-not-at-top
  from conftest import config_path  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  out = metarec_here("train", f"--config={config_path('tiny')}",
                     f"--workdir={workdir}", "--config.train.num_steps=6",
                     "--config.meta.algorithm=metric",
                     "--config.model.anchor=false",
                     "--config.train.early_stop_patience=0",
                     "--config.train.select_on=served")
  assert out.returncode == 0, out.stderr
  logged = re.findall(r"through the median map (\d\.\d{4}), which selects"
                      r" checkpoints", out.stderr)
  assert logged, out.stderr
  out = metarec_here("eval", f"--workdir={workdir}", "--nosupport_curve")
  chosen = re.search(r"best validated checkpoint: step \d+ \(validation MAE"
                     r" (\d\.\d{4})", out.stderr)
  assert chosen and chosen.group(1) in logged, (out.stderr, logged)
