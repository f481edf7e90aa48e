"""The training loop: `train_and_evaluate(config, workdir)`.

One readable loop in the big_vision manner: build the state with a jitted
init, compile the meta-step for every batch shape ahead of time, then step,
log, evaluate and checkpoint. Metrics reach the host only on log steps; the
non-finite counters are read only where the loop reads the device anyway
(see `NonFiniteGuard`); the host waits only when it is `MAX_AHEAD` steps
ahead of the device. Each cadence (log, histograms, validation,
checkpoint) is one `due` test.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import shlex
import time
from typing import Any

import jax

from metarec_jax import backend, config_io, config_meanings, config_reference
from metarec_jax import atomic, experiment, runtime
from metarec_jax import eval as eval_lib
from metarec_jax.data.convert import prepare, store_checks
from metarec_jax.data.pipeline import Prefetcher
from metarec_jax.eval import support_curve
from metarec_jax.eval.evaluate import Evaluator
from metarec_jax.workdir import checkpoint as ckpt_lib
from metarec_jax.workdir import lock, reporting, resume, telemetry
from metarec_jax.workdir import progress as progress_lib
from metarec_jax.workdir.preemption import StopRequest
from metarec_jax.train import distill, median_map
from metarec_jax.train import shares as shares_lib
from metarec_jax.train.guard import NonFiniteGuard
from metarec_jax.train import start as start_lib
from metarec_jax.train import validation
from metarec_jax.train.selection import Selection
from metarec_jax.train.trainer import Trainer, check_batch_size
from metarec_jax.workdir.criterion import criterion, criterion_name

log = logging.getLogger("metarec")

MAX_AHEAD = 2  # steps the host may dispatch before the device finishes them


def due(step: int, every: int, last: int) -> bool:
  """Whether `step` is a step of a cadence: every `every` steps and the
  `last` one; `every` = 0: only the last; < 0: never."""
  return every >= 0 and (step == last or (every > 0 and step % every == 0))


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Meta-trains as `config` says in `workdir`, resuming if possible.

  Keys `config` lacks take their defaults (`config_io.complete`). A run whose checkpoint has reached `train.num_steps` says so and returns
  at once (nothing compiled, nothing written). The learning-rate schedule's
  length is `resume.schedule_horizon`, recorded in the saved config as
  `train.schedule_steps`.

  Every validation whose MAE is the best so far is saved as a checkpoint
  with that MAE (`eval` and `export` use the best by default); with
  `train.early_stop_patience` > 0 the run stops after that many
  validations without a better MAE.

  Returns:
    A summary: `step`, the last training metrics (`train`), the final
    validation's metrics (`val`) and support curve (`curve`), the best of
    this start (`best`: `step`, `val`), `early_stopped`, `preempted` (by a
    signal), `finished` (at `num_steps`), `lead` (process 0), `rating_range`.
  """
  workdir = os.path.abspath(workdir)
  # A copy (it gets the schedule's resolved length) with every key.
  config = config_io.complete(config)
  # The cheap checks first: a config that cannot run creates nothing.
  config_reference.validate(config)
  model = int(config.mesh.model)
  runtime.check_model_axis(model, devices=jax.device_count(),
                           local_devices=jax.local_device_count())
  check_batch_size(config, jax.device_count() // model)
  prepare.check_source(config.data, workdir)
  store_checks.check_inputs(config.data, workdir)
  distill.check(config)
  made = atomic.first_missing(workdir)  # removed if nothing is written
  os.makedirs(workdir, exist_ok=True)
  is_lead = jax.process_index() == 0
  tc = config.train
  served_mae = tc.select_on == "served"  # the criterion of what is served
  num_steps = int(tc.num_steps)
  config_record = config_io.to_dict(config)
  summary: dict[str, Any] = {"lead": is_lead}

  # The lock comes before anything is written in the work directory.
  with lock.hold(workdir, made=made), StopRequest() as stop:
    resume.keep_run_constants(config, workdir)
    # Before the first checkpoint nothing was trained on the store: one
    # that no longer follows the files or settings is built again.
    trainer = Trainer(config, workdir, exp=experiment.build(
        config, workdir, log=log.info,
        rebuild_stale=not store_checks.has_checkpoint(workdir)))
    exp = trainer.exp
    summary["rating_range"] = exp.store.rating_range  # for the verdicts
    # As resolved from the data: `eval` and `export` rebuild the split.
    config.eval.val_fraction = exp.split.val_fraction
    config_record = config_io.to_dict(config)
    checkpointer = ckpt_lib.Checkpointer(workdir,
                                         keep=int(config.checkpoint.keep))
    reporter = None
    progress = progress_lib.Progress(bar=is_lead)
    rates = exp.meta_config.spec.rates  # encoders are no rates to report
    try:
      (state, restored_step, horizon, saved_config, cut,
       saved_selection) = start_lib.restore_or_init(trainer, checkpointer,
                                                    config_record)
      # Checkpoint selection, early stopping (also over a resume's older ones)
      selection = Selection.resumed(int(tc.early_stop_patience),
                                    checkpointer.validated(), saved_selection)
      summary["best"] = selection.best_report  # resumed: maybe an older step
      done = None  # nothing to train: where the run is, the key to raise
      ended = saved_config is not None and restored_step >= int(  # its end:
          saved_config["train"]["num_steps"])  # no early stop, extendable
      if selection.should_stop and not cut and not ended:
        done = (f"stopped early at step {restored_step} (train."
                f"early_stop_patience={selection.patience})",
                "train.early_stop_patience")
      elif restored_step is not None and restored_step >= num_steps and not (
          cut and restored_step == num_steps):
        done = (f"has reached step {restored_step} (train.num_steps="
                f"{num_steps})", "train.num_steps to train on")
      if done:
        reporting.Reporter.drop_rows_of_a_killed_run(workdir, restored_step,
                                                     active=is_lead)
        log.info("nothing to train: the run in %s %s. Next: `metarec eval"
                 " --workdir=%s`, or resume with a larger --config.%s",
                 workdir, done[0], shlex.quote(workdir), done[1])
        return {"step": restored_step, "finished": True}
      if saved_config is not None:
        resume.log_schedule_change(tc, saved_config, step=restored_step,
                                   horizon=horizon)
      tc.schedule_steps = horizon
      config_record = config_io.to_dict(config)
      trainer.hyper = trainer.hyper_args(tc, horizon)
      reporter = reporting.Reporter(workdir, active=is_lead)
      # Rows a killed run logged past its checkpoint are logged again (all
      # of them where none was committed: a fresh start logs step 0 again).
      reporter.drop_rows_after(-1 if restored_step is None else restored_step)
      # HParams once per start (TensorBoard keeps the first).
      reporter.hparams(reporting.flat_hparams(config_record),
                       telemetry.hparam_metrics(exp.implicit.enabled),
                       descriptions=config_meanings.MEANINGS)
      run_config = start_lib.RunConfig(
          workdir, config, exp.store.manifest.get("source", {}).get("files"),
          active=is_lead, resumed=restored_step is not None)
      step = int(runtime.to_host(state.step))
      evaluator = Evaluator(exp, trainer.eval_mesh)
      guard = NonFiniteGuard(tc, checkpointer, step, state)

      def checkpoint(step, val_loss=None, params=None, cut=False):
        start_lib.save(checkpointer, step, state, config_record,
                       val_mae=val_loss, params=params, validation_cut=cut,
                       selection=selection.record(), run_config=run_config,
                       teacher=trainer.teacher and trainer.teacher.pin)

      def save_and_report_stop(step, validation_cut=False, val_loss=None,
                               validated=None, kept=False):
        # Skipped updates leave the state they began from: saved only where
        # a periodic save would be (`kept`: a best, an early stop's, the last).
        saves = (step != restored_step and step > 0
                 and (kept or not guard.streak))
        if saves:
          checkpoint(step, val_loss, validated, validation_cut)
        start_lib.report_stop(step, workdir, run_config, saved=saves,
                              cut=validation_cut, skipped=guard.streak)
        summary["preempted"] = True

      # Warm-up: every program the loop runs is compiled now, not in it (the
      # meta-step, the validation, the params' move to the latter's mesh).
      eval_every = int(tc.eval_every_steps)
      validates = eval_every >= 0  # -1: never, not even at the end
      t0 = time.perf_counter()
      jobs = trainer.compile_jobs()
      with_shares = shares_lib.present(trainer.abstract_state().params)
      with_map = median_map.present(trainer.abstract_state().params)
      if validates:
        jobs += validation.compile_jobs(evaluator, trainer, with_shares,
                                        with_map)
        jobs.append(lambda: trainer.eval_params(state.params))
      with runtime.CompileCounter() as warmup:
        if not runtime.run_compile_jobs(jobs, should_stop=stop.now):
          save_and_report_stop(step)
          return {**summary, "step": step}
      log.info("compiled the meta-step for support widths %s%s in %.1fs"
               " (%d program(s) compiled, %d from the persistent compilation"
               " cache)", trainer.sampler.widths,
               " and the validation" if validates else "",
               time.perf_counter() - t0, warmup.compiled, warmup.cache_hits)
      summary["warmup_compiles"] = warmup.compiled
      summary["warmup_cache_hits"] = warmup.cache_hits
      compiles = runtime.CompileCounter().start()

      def save(step, val_loss=None, params=None):
        # orbax compiles its own small copy programs on a first save; they
        # are not ours to count.
        compiles.stop()
        checkpoint(step, val_loss, params)
        compiles.start()

      def validate(step):
        """`validation.validate` of the state after `step`."""
        with guard.validating(step):
          return validation.validate(evaluator, trainer, state.params, step,
                                     with_shares=with_shares,
                                     with_map=with_map, should_stop=stop.now)

      def report(step, results, shares):
        """Writes a validation's metrics (with its fitted shares) and logs
        them."""
        reporter.scalars(step, {**eval_lib.scalar_metrics(
            results, baselines=False), **shares})
        _log_validation(step, results["val"], shares, served_mae)

      served = None  # the last validated params (with their shares)

      def validate_and_select(step):
        """Validates `step`, reports it and updates the selection:
        `(validation loss or None, whether it is the best so far, the
        params to save or None)`; None if a stop cut it short."""
        nonlocal served
        outcome = validate(step)
        if outcome is None:
          return None
        results, validated, shares = outcome
        served = validated
        summary["val"] = results["val"]
        report(step, results, shares)
        val_loss = criterion(results["val"], shares if served_mae else None)
        improved = val_loss is not None and selection.update(
            val_loss, {"step": step, "val": results["val"]})
        summary["best"] = selection.best_report
        return val_loss, improved, validated

      if cut and validates:
        # A stop cut the restored step's validation short: it is done now,
        # and the checkpoint saved again with it.
        log.info("step %d: validating the restored step (a stop cut its"
                 " validation short)", step)
        done = validate_and_select(step)
        if done is None:
          save_and_report_stop(step)
          return {**summary, "step": step}
        save(step, done[0], done[2])
        # Where that validation ends the patience, no step is trained (it
        # would free the validated params' buffers that the curve reads).
        summary["early_stopped"] = selection.should_stop
      if eval_every > 0 and restored_step is None:
        # The initial state is a candidate like any validated step, its
        # shares fitted too: the anchored model starts from the item-mean +
        # user-bias baseline, which share 0 serves exactly, and on data
        # where training only overfits, the run keeps that start.
        outcome = validate(step)
        if outcome is None:  # a stop: nothing saved, the resume starts over
          save_and_report_stop(step)
          return {**summary, "step": step}
        results, initial, shares = outcome
        initial_loss = criterion(results["val"],
                                 shares if served_mae else None)
        # A non-finite loss (non-finite ratings) is no candidate.
        if initial_loss is not None and math.isfinite(initial_loss):
          report(step, results, shares)
          selection.start(initial_loss, {"step": step, "val": results["val"]})
          summary["best"] = selection.best_report
          save(step, initial_loss, initial)
      log_every = int(config.log.every_steps)
      histogram_every = int(config.log.histogram_every_steps)  # 0: never
      save_every = int(config.checkpoint.every_steps)
      rate = telemetry.StepRate(step, int(tc.tasks_per_step))
      pipeline = Prefetcher(trainer.sampler, trainer.task_sharding,
                            start=step,
                            stop=step if summary.get("early_stopped")
                            else num_steps,
                            depth=int(tc.prefetch),
                            workers=backend.input_workers(
                                int(tc.input_workers)))
      in_flight = collections.deque()  # a scalar of each unfinished step
      progress.start(num_steps, step)
      try:
        for step_index, batch in pipeline:
          state, metrics = trainer.step(state, trainer.prepare(batch),
                                        trainer.hyper)
          step = step_index + 1
          # The host runs at most MAX_AHEAD steps ahead of the device (each
          # step in flight holds its batch): a wait, not a read, and only
          # when the device is behind.
          in_flight.append(metrics["train/loss"])
          if len(in_flight) > MAX_AHEAD:
            in_flight.popleft().block_until_ready()

          values = None  # the metrics on the host, on log steps only
          if due(step, log_every, num_steps):
            values = {k: float(runtime.to_host(v)) for k, v in metrics.items()}
            guard.check(step, values["train/nonfinite_streak"],
                        values["train/nonfinite_total"])
            values["train/tasks_per_sec"] = rate.at(step)
            values.update(telemetry.inner_rate_scalars(
                state.params.get("inner") if rates else None,
                per_step=rates == "step"))
            reporter.scalars(step, values)
            summary["train"] = values
          progress.advance(step, values)
          validating = due(step, eval_every, num_steps)
          rate.pause(in_flight[-1] if validating else None)  # and saves
          val_loss, improved, validated = None, False, None  # (params to save)
          cut = False  # a stop cut this step's validation short
          if validating:
            guard.check_state(step, state)
            done = validate_and_select(step)
            cut = done is None
            val_loss, improved, validated = done or (None, False, None)
          early_stop = validating and step < num_steps and selection.should_stop
          if (is_lead and histogram_every > 0  # and at an early stop's end
              and (due(step, histogram_every, num_steps) or early_stop)):
            reporter.histograms(step, telemetry.parameter_histograms(
                state.params))
          if stop(step):
            guard.check_state(step, state)
            # A validation done before the stop is saved with the step.
            save_and_report_stop(step, validation_cut=cut, val_loss=val_loss,
                                 validated=validated, kept=improved
                                 or early_stop or step == num_steps)
            break
          if due(step, save_every, num_steps) or improved or early_stop:
            guard.check_state(step, state)
            # Skipped updates leave the state they began from: not new.
            if improved or early_stop or step == num_steps or not guard.streak:
              save(step, val_loss, validated)
          rate.resume()
          if early_stop:
            log.info("step %d: no better validation %s in %d validations"
                     " (train.early_stop_patience): stopping early", step,
                     criterion_name("ranking" in summary.get("val", {})),
                     selection.stale)
            summary["early_stopped"] = True
            break
      finally:
        progress.close()
        pipeline.close()
        compiles.stop()
      summary["compiles_after_warmup"] = compiles.programs
      if compiles.programs:
        log.warning("%d compilation(s) after the warm-up: a batch shape"
                    " escaped the buckets", compiles.programs)
      if ((step == num_steps or summary.get("early_stopped"))
          and "val" in summary):
        if not stop.now():
          with guard.validating(step):
            params, curve_step = start_lib.curve_params(
                trainer, checkpointer, step,
                served if served is not None else state.params)
            summary["curve"] = support_curve.evaluate_and_write(
                workdir, evaluator, trainer.eval_params(params),
                {"val": exp.split.scenarios["val"]}, step=curve_step,
                seed=int(config.eval.seed), write=is_lead,
                should_stop=stop.now)
        if stop.now() and not summary.get("preempted"):
          # The run is saved (a stop during its last save or validation,
          # or during the curve): only the curve is missing.
          log.warning("stopped by a signal at step %d before its support"
                      " curve: not written (`metarec eval --workdir=%s`"
                      " writes it)", step, shlex.quote(workdir))
          summary["preempted"] = True
    finally:
      checkpointer.close()
      if reporter is not None:
        reporter.close()
  summary["step"] = step
  return summary


def _log_validation(step: int, val: dict, fitted: dict, selects: bool
                    ) -> None:  # selects: the served MAE selects checkpoints
  if "ranking" in val:
    full = val["ranking"]["full"]
    log.info("step %d  validation full-catalog HR@10 %s nDCG@10 %s", step,
             _fmt(full["hr@10"]), _fmt(full["ndcg@10"]))
  else:
    mapped = ("" if fitted.get("val/median_map") != 1.0 else
              f"; through the median map {_fmt(fitted['val/median_map_mae'])}"
              + (", which selects checkpoints" if selects else ""))
    log.info("step %d  validation MAE %s (unadapted %s%s)", step,
             _fmt(val["mae"]), _fmt(val["mae_unadapted"]), mapped)


def _fmt(x):
  return "n/a" if x is None else f"{x:.4f}"
