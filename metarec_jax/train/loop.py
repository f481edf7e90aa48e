"""The training loop: `train_and_evaluate(config, workdir)`.

One readable loop in the big_vision manner: build the state with a jitted
init, compile the meta-step for every batch shape ahead of time, then step,
log, evaluate and checkpoint. Metrics reach the host only on log steps.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np

from metarec_jax import config_io, config_reference, experiment, runtime
from metarec_jax.data.pipeline import Prefetcher
from metarec_jax.data.sampler import TrainSampler
from metarec_jax.data.tasks import batch_shapes
from metarec_jax.errors import InputError
from metarec_jax.eval import support_curve
from metarec_jax.eval.evaluate import Evaluator
from metarec_jax.train import checkpoint as ckpt_lib
from metarec_jax.train import optim, progress as progress_lib, reporting
from metarec_jax.train import state as state_lib
from metarec_jax.train import telemetry
from metarec_jax.train.step import make_train_step

log = logging.getLogger("metarec")


class TrainingError(Exception):
  """The run cannot go on (e.g. persistent non-finite meta-gradients)."""


class StopSignal:
  """Remembers SIGTERM/SIGINT so the loop can finish the step and save."""

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def __call__(self) -> bool:
    return self.received is not None


def resolve_chunk(config, num_devices: int) -> int:
  """Tasks per device per chunk (`train.chunk_tasks`, 0 = automatic).

  Automatic: 32 on CPU, where a 32-task working set stays in cache and
  measured fastest; the whole per-device batch on accelerators.
  """
  per_device = int(config.train.tasks_per_step) // num_devices
  chunk = int(config.train.chunk_tasks)
  if chunk <= 0:
    chunk = 32 if jax.default_backend() == "cpu" else per_device
    chunk = math.gcd(chunk, per_device) or per_device
  return min(chunk, per_device)


def check_batch_size(config, num_devices: int) -> int:
  """Validates `train.tasks_per_step`; returns the chunk size."""
  tasks = int(config.train.tasks_per_step)
  if tasks <= 0 or tasks % num_devices:
    raise InputError(
        f"train.tasks_per_step={tasks} must be a positive multiple of the"
        f" {num_devices} devices")
  chunk = resolve_chunk(config, num_devices)
  if (tasks // num_devices) % chunk:
    raise InputError(
        f"train.tasks_per_step={tasks} over {num_devices} devices is"
        f" {tasks // num_devices} tasks per device, not a multiple of"
        f" train.chunk_tasks={chunk}")
  return chunk


class Trainer:
  """Everything the loop needs, built once (also used by `metarec bench`)."""

  def __init__(self, config, workdir: str, *, exp: experiment.Experiment
               | None = None):
    self.config = config
    self.workdir = workdir
    self.mesh = runtime.make_mesh()
    self.num_devices = self.mesh.devices.size
    self.chunk = check_batch_size(config, self.num_devices)
    self.exp = exp or experiment.build(config, workdir, log=log.info)
    self.optimizer = optim.outer_optimizer(config.train)
    self.schedule = optim.schedule(config.train)
    self.replicated = runtime.replicated(self.mesh)
    self.task_sharding = runtime.task_sharding(self.mesh)
    self.sampler = TrainSampler(
        self.exp.split, self.exp.tables, self.exp.store.items,
        self.exp.store.ratings, self.exp.sampler_spec(),
        process_index=jax.process_index(),
        process_count=jax.process_count())
    init = functools.partial(state_lib.create, self.exp.model,
                             self.exp.meta_config, self.optimizer)
    self.init = jax.jit(init, out_shardings=self.replicated)
    step = make_train_step(self.exp.model.loss_fn, self.exp.meta_config,
                           self.optimizer, self.schedule, self.mesh,
                           chunk_tasks=self.chunk)
    self.step = runtime.CompiledByShape(
        jax.jit(step, donate_argnums=(0,),
                out_shardings=(self.replicated, self.replicated)),
        name="train_step")

  def rng(self) -> jax.Array:
    return jax.random.PRNGKey(int(self.config.train.seed))

  def abstract_state(self):
    shapes = jax.eval_shape(self.init, self.rng())
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                       sharding=self.replicated), shapes)

  def abstract_batch(self, width: int):
    return batch_shapes(self.exp.tables.specs,
                        int(self.config.train.tasks_per_step), width,
                        int(self.config.data.query_size), self.task_sharding)

  def compile_all(self) -> float:
    """Compiles the meta-step for every bucket; returns the seconds spent."""
    state = self.abstract_state()
    for width in self.sampler.widths:
      self.step.compile(state, self.abstract_batch(width))
    return self.step.compile_seconds


def _metrics_to_host(metrics: dict) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


def _eval_metrics(results: dict, prefix: str) -> dict[str, float]:
  out = {}
  for scenario, m in results.items():
    for key in ("mae", "rmse", "ndcg@1", "ndcg@3", "mae_unadapted"):
      if m.get(key) is not None:
        out[f"{prefix}{scenario}/{key}"] = m[key]
  return out


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Meta-trains as `config` says in `workdir`, resuming if possible.

  Returns:
    A summary: the final step, the last training metrics and the final
    validation metrics.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_lead = jax.process_index() == 0
  if is_lead:
    config_io.write_workdir_config(workdir, config)
  trainer = Trainer(config, workdir)
  exp, tc = trainer.exp, config.train
  num_steps = int(tc.num_steps)
  reporter = reporting.Reporter(workdir, active=is_lead)
  checkpointer = ckpt_lib.Checkpointer(
      workdir, keep=int(config.checkpoint.keep),
      every_steps=int(config.checkpoint.every_steps))
  config_record = config_io.to_dict(config)
  # Observability (issue 8): HParams once per start, a bar or log lines.
  reporter.hparams(reporting.flat_hparams(config_record),
                   telemetry.HPARAM_METRICS,
                   descriptions=config_reference.MEANINGS)
  progress = progress_lib.Progress(bar=is_lead)
  per_step_rates = exp.meta_config.algorithm == "mamlpp"
  evaluator = Evaluator(exp, trainer.mesh)
  summary: dict[str, Any] = {}

  with StopSignal() as stop:
    # Resume order: (1) the newest complete checkpoint holds the state, the
    # step and therefore the sampler position; (2) without one, a fresh
    # jitted init from train.seed.
    if checkpointer.latest_step() is not None:
      state, _, start = checkpointer.restore(trainer.abstract_state())
      log.info("resumed from the checkpoint of step %d in %s", start,
               checkpointer.directory)
    else:
      state = trainer.init(trainer.rng())
      start = 0
    start = int(jax.device_get(state.step))

    t0 = time.perf_counter()
    trainer.compile_all()
    log.info("compiled the meta-step for %d support widths %s in %.1fs",
             len(trainer.sampler.widths), trainer.sampler.widths,
             time.perf_counter() - t0)

    pipeline = Prefetcher(trainer.sampler, trainer.task_sharding,
                          start=start, stop=num_steps, depth=int(tc.prefetch))
    tasks_per_step = int(tc.tasks_per_step)
    last_log_time, last_log_step = time.perf_counter(), start
    pending = None  # (step, metrics) of the previous step, read one late
    step = start
    progress.start(num_steps, start)
    try:
      for step_index, batch in pipeline:
        state, metrics = trainer.step(state, batch)
        step = step_index + 1
        if pending is not None:
          _check_finite(*pending, max_nonfinite=int(tc.max_nonfinite))
        pending = (step, metrics)
        if step % int(config.log.every_steps) == 0 or step == num_steps:
          values = _metrics_to_host(metrics)
          now = time.perf_counter()
          values["train/tasks_per_sec"] = (
              (step - last_log_step) * tasks_per_step / (now - last_log_time))
          last_log_time, last_log_step = now, step
          values.update(telemetry.inner_rate_scalars(
              state.params.get("inner"), per_step=per_step_rates))
          reporter.scalars(step, values)
          summary["train"] = values
          progress.advance(step, values)
        else:
          progress.advance(step)
        if is_lead and telemetry.histograms_due(
            step, every=int(config.log.histogram_every_steps),
            num_steps=num_steps):
          reporter.histograms(step, telemetry.parameter_histograms(
              state.params))
        if (int(tc.eval_every_steps) > 0
            and step % int(tc.eval_every_steps) == 0) or step == num_steps:
          results = evaluator.evaluate(state.params, ("val",),
                                       should_stop=stop)
          if results is not None:
            values = _eval_metrics(results, "")
            reporter.scalars(step, values)
            summary["val"] = results["val"]
            log.info("step %d  validation MAE %s (unadapted %s)", step,
                     _fmt(results["val"]["mae"]),
                     _fmt(results["val"]["mae_unadapted"]))
          if results is not None and step == num_steps:
            support_curve.evaluate_and_write(
                workdir, evaluator, state.params,
                {"val": exp.split.scenarios["val"]}, step=step,
                seed=int(config.eval.seed), write=is_lead, should_stop=stop)
        if checkpointer.should_save(step) or step == num_steps or stop():
          checkpointer.save(step, state, config_record)
        if stop():
          log.warning(
              "received signal %d: saved step %d; resume with `metarec train"
              " --workdir=%s`", stop.received, step, workdir)
          summary["preempted"] = True
          break
      if pending is not None:
        _check_finite(*pending, max_nonfinite=int(tc.max_nonfinite))
    finally:
      progress.close()
      pipeline.close()
      checkpointer.close()
      reporter.close()
  summary["step"] = step
  return summary


def _fmt(x):
  return "n/a" if x is None else f"{x:.4f}"


def _check_finite(step: int, metrics: dict, *, max_nonfinite: int) -> None:
  streak = int(jax.device_get(metrics["train/nonfinite_streak"]))
  if streak:
    log.warning("step %d: non-finite meta-gradient, update skipped (%d in a"
                " row, %d in total)", step, streak,
                int(jax.device_get(metrics["train/nonfinite_total"])))
  if streak >= max(max_nonfinite, 1):
    raise TrainingError(
        f"step {step}: {streak} consecutive non-finite meta-gradients"
        f" (train.max_nonfinite={max_nonfinite}); the last good state is in"
        " the newest checkpoint")
