"""`metarec bench`: throughput and utilisation of the real meta-step.

Runs the training step of a config (the same `Trainer` the loop uses: input
pipeline, sharding, chunking, compiled executables) for a few warm-up steps
and then `steps` timed ones, and reports:

- `tasks_per_sec`, `step_seconds`: of full meta-steps after compilation;
- `step_flops`: XLA's count (`lowered.cost_analysis()`) for the step as it
  runs (dual form where it applies) in a lowering with the inner loop
  unrolled, unchunked and without remat, for the whole batch on one device
  (XLA counts a rolled `while` body once, and a sharded program per device,
  so a layout changed the count). It is counted on the program
  before XLA optimises it, the arithmetic the step asks for (the model
  FLOPs of MFU): no compilation. On melu-ref it gives the compiled
  program's 48.5 MFLOP per task; the plain formulation's 89.9 is 1.3% below
  the compiled 91.1;
- `achieved_gflops`, `peak_gflops` (the best of 5 jitted n x n matmuls
  in the same process, in the step's `model.compute_dtype`; n per backend,
  `backend.Defaults.matmul_size`), `utilization` = achieved / peak (one
  device's peak: on N accelerators it runs to N; CPU devices share the
  host's cores, which one device's matmul already uses);
  `workload.matmul_gflops` holds that rate in float32 and in bfloat16;
- `compile_seconds` (all buckets), `input_wait_fraction` (share of the time
  the step loop waited for the input pipeline), `peak_rss_mb`;
- `input_tasks_per_sec`: the input pipeline alone (its
  `train.input_workers` threads building and placing batches, no step
  running): where it is not well above `tasks_per_sec`, the host, not the
  device, bounds training;
- `device_tasks_per_sec`: the meta-step alone, `steps` more steps over the
  last timed batches, already on the devices (no input pipeline): the
  rate the devices reach where the host keeps up, so that learners can be
  compared on an accelerator whose step outruns the pipeline;
- `param_bytes_per_device`: the bytes of parameters and optimizer state
  held by the first device, from the arrays' shardings (a quarter of the
  replicated figure where `mesh.model=4` splits the tables that dominate),
  and `device_memory`: the first device's own `bytes_in_use` and
  `peak_bytes_in_use` after the timed steps (`memory_stats()`; null where
  the backend keeps none, as on CPU).

`workload.plain_step_flops` is the same count for the plain formulation
(`meta.dual_form=False`), so the arithmetic the dual form saves is visible.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from metarec_jax import backend, config_io, experiment, meta, runtime
from metarec_jax.data.convert import prepare
from metarec_jax.data.pipeline import Prefetcher
from metarec_jax.models import precision
from metarec_jax.train import placement
from metarec_jax.train.trainer import Trainer

log = logging.getLogger("metarec")


def peak_matmul_gflops(repeats: int = 5, n: int | None = None,
                       dtype: str = "float32") -> float:
  """Best rate of `repeats` jitted n x n matmuls of `dtype` on device 0
  (n: the backend's `matmul_size`)."""
  n = n or backend.defaults().matmul_size
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best / 1e9


def _counted_flops(config, workdir: str, exp, width: int) -> float | None:
  """XLA's FLOPs of the unrolled, unchunked, non-remat step (the whole batch),
  counted on the lowered program: compiling it would cost as much as the
  step's own compilation and change the count by at most 1.3% (melu-ref).
  Where the backend counts only compiled programs (the lowered count is
  None), the compiled one's; None where neither is counted."""
  flat = copy.deepcopy(config)
  flat.meta.unroll = max(int(config.meta.inner_steps), 1)  # fully unrolled
  flat.meta.remat = False
  # Counted on one device, whole: the arithmetic of the step, whatever its
  # layout (a shard's program times the devices counted a `mesh.model`
  # group's shared work and the replicated update once per device).
  flat.mesh.model = 1
  trainer = Trainer(flat, workdir, exp=experiment.Experiment(
      config=flat, store=exp.store, split=exp.split, tables=exp.tables,
      model=exp.model, meta_config=experiment.meta_config(
          flat, exp.model, inner_rate=exp.meta_config.inner_lr)),
                    chunk_tasks=-1, devices=jax.local_devices()[:1])
  lowered = trainer.step.jitted.lower(
      trainer.abstract_state(), trainer.abstract_batch(width),
      trainer.abstract_hyper())
  cost = _first(lowered.cost_analysis())
  if not cost or "flops" not in cost:
    cost = _first(lowered.compile().cost_analysis())
  if not cost or "flops" not in cost:
    log.warning("this backend counts no FLOPs: no utilization")
    return None
  return float(cost["flops"])


def _first(cost):
  """A cost analysis's dict (older jax gave a list of one per program)."""
  return cost[0] if isinstance(cost, (list, tuple)) and cost else cost


def device_memory(device) -> dict | None:
  """`bytes_in_use` and `peak_bytes_in_use` of `device` (None where the
  backend keeps no statistics)."""
  stats = device.memory_stats()
  if not stats:
    return None
  return {k: stats.get(k) for k in ("bytes_in_use", "peak_bytes_in_use")}


def default_workdir(config) -> str:
  """A cache folder per data config, so the store is built once."""
  key = hashlib.sha1(json.dumps(config_io.to_dict(config.data),
                                sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(tempfile.gettempdir(), "metarec-bench", key)


def adapt_latency(trainer: Trainer, state, batch, *,
                  repeats: int = 20) -> float:
  """Median seconds to adapt ONE user and predict its query (jitted, after
  compilation): what serving a new user costs."""
  exp = trainer.exp
  model, config = exp.model, exp.meta_config
  task = jax.tree.map(lambda a: np.asarray(a)[0], jax.device_get(batch))

  @jax.jit
  def serve(params, inner, task):
    adapted = meta.adapt(model.loss_fn, params, task["support"],
                         config=config, inner=inner)
    return model.predict(adapted, task["query"]["features"])

  # On one device, once: a table split over the mesh would otherwise be
  # gathered into a fresh host array and copied in again on every call
  # (measured: 1.3 s per call for configs/idemb_large.py's 2**21 rows).
  params = jax.device_put(jax.device_get(state.params), jax.local_devices()[0])
  args = (params["model"], params.get("inner"), task)
  serve(*args).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    serve(*args).block_until_ready()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def input_rate(trainer: Trainer, workers: int, batches: int) -> float:
  """Tasks/s of the input pipeline alone: `batches` batches built and
  placed by `workers` threads, nothing else running."""
  pipeline = Prefetcher(trainer.sampler, trainer.task_sharding, start=0,
                        stop=batches, depth=workers, workers=workers)
  t0 = time.perf_counter()
  try:
    for _, batch in pipeline:
      jax.block_until_ready(batch)
  finally:
    pipeline.close()
  per_step = int(trainer.config.train.tasks_per_step)
  return batches * per_step / (time.perf_counter() - t0)


# Batches kept on the devices for `device_tasks_per_sec`: a few, so that
# its steps see the timed steps' mix of support widths without holding
# much memory.
_RESIDENT_BATCHES = 4


def _resident_steps(trainer: Trainer, state, batches: list,
                    steps: int) -> tuple[object, float]:
  """`steps` meta-steps cycling over `batches` (prepared and on the
  devices): the state after them and the seconds per step."""
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for i in range(steps):
    state, metrics = trainer.step(state, batches[i % len(batches)],
                                  trainer.hyper)
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - t0) / steps


def run(config, *, workdir: str | None = None, steps: int = 20,
        warmup: int = 3, count_flops: bool = True,
        plain_flops: bool = True) -> dict:
  """Benchmarks the meta-step of `config`; returns the JSON of docs/design.md.

  `count_flops=False` skips XLA's FLOP counts (two more lowerings):
  `step_flops`, `achieved_gflops`, `utilization` and the plain counts are
  then None; `plain_flops=False` skips only the plain formulation's count
  (one lowering). `adapt_seconds` is `adapt_latency` of one user."""
  workdir = workdir or default_workdir(config)
  # The mesh and the data first: a model axis the devices cannot form, or
  # a missing data.root or store, fails before a folder is created or a
  # matmul timed.
  runtime.check_model_axis(int(config.mesh.model), devices=jax.device_count(),
                           local_devices=jax.local_device_count())
  prepare.check_source(config.data, workdir)
  os.makedirs(workdir, exist_ok=True)
  rates = {dtype: peak_matmul_gflops(dtype=dtype)
           for dtype in precision.COMPUTE_DTYPES}
  for dtype, rate in rates.items():
    log.info("dense %s matmul: %.1f GFLOP/s", dtype, rate)
  compute_dtype = config.model.compute_dtype
  peak = rates[compute_dtype]
  t0 = time.perf_counter()
  trainer = Trainer(config, workdir)
  trainer.load_teacher()
  log.info("experiment ready in %.1fs", time.perf_counter() - t0)
  exp = trainer.exp
  state = trainer.init(trainer.rng())
  param_bytes = placement.bytes_on_device((state.params, state.opt_state),
                                          jax.local_devices()[0])
  t0 = time.perf_counter()
  trainer.compile_all()
  compile_seconds = time.perf_counter() - t0
  log.info("compiled %d bucket(s) in %.1fs", len(trainer.sampler.widths),
           compile_seconds)

  tasks = int(config.train.tasks_per_step)
  workers = backend.input_workers(int(config.train.input_workers))
  input_tasks_per_sec = input_rate(trainer, workers, max(2 * workers, 6))
  pipeline = Prefetcher(trainer.sampler, trainer.task_sharding, start=0,
                        stop=warmup + steps, depth=int(config.train.prefetch),
                        workers=workers)
  widths, resident = [], []
  try:
    for i, (step, batch) in enumerate(pipeline):
      if i == warmup:
        jax.block_until_ready(state)
        pipeline.wait_seconds = 0.0
        t0 = time.perf_counter()
      prepared = trainer.prepare(batch)
      state, metrics = trainer.step(state, prepared, trainer.hyper)
      if i >= warmup:
        widths.append(trainer.sampler.width(step))
        resident = (resident + [prepared])[-_RESIDENT_BATCHES:]
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - t0
  finally:
    pipeline.close()
  step_seconds = elapsed / steps
  state, device_seconds = _resident_steps(trainer, state, resident, steps)
  latency = adapt_latency(trainer, state, batch)
  width = max(set(widths), key=widths.count)
  count_plain, plain_flops = plain_flops, None  # the flag, then the count
  step_flops = achieved = None
  if count_flops:
    step_flops = _counted_flops(config, workdir, exp, width)
    if count_plain:
      plain = copy.deepcopy(config)
      plain.meta.dual_form = False
      plain_flops = _counted_flops(plain, workdir, exp, width)
    else:
      plain_flops = None
    achieved = (None if step_flops is None
                else step_flops / step_seconds / 1e9)
  return {
      "tasks_per_sec": tasks / step_seconds,
      "step_seconds": step_seconds,
      "device_tasks_per_sec": tasks / device_seconds,
      "step_flops": step_flops,
      "achieved_gflops": achieved,
      "peak_gflops": peak,
      "utilization": None if achieved is None else achieved / peak,
      "adapt_seconds": latency,
      "compile_seconds": compile_seconds,
      "input_wait_fraction": pipeline.wait_seconds / elapsed,
      "input_tasks_per_sec": input_tasks_per_sec,
      "peak_rss_mb": runtime.peak_rss_mb(),
      "param_bytes_per_device": param_bytes,
      "device_memory": device_memory(jax.local_devices()[0]),
      "workload": {
          "model": config.model.name,
          "compute_dtype": compute_dtype,
          "matmul_gflops": rates,
          # As asked: `fomaml` runs as first-order `maml` (second_order).
          "algorithm": config.meta.algorithm,
          "second_order": exp.meta_config.second_order,
          "inner_steps": exp.meta_config.inner_steps,
          # The teacher's targets are computed as each batch is prepared:
          # in the fed rate, not in the resident batches nor the FLOPs.
          "distilled": trainer.teacher is not None,
          "dual_form": exp.meta_config.dual_form,
          "remat": exp.meta_config.remat,
          "tasks_per_step": tasks,
          "chunk_tasks": trainer.chunk,
          "support_width": width,
          # Implicit feedback: sampled negatives per positive slot (the
          # support rows are support_width * (1 + negatives)).
          "negatives": trainer.sampler.spec.negatives,
          "loss": config.model.loss,
          "query_size": trainer.sampler.spec.query_size,
          "devices": trainer.num_devices,
          "mesh_model": int(config.mesh.model),
          "backend": jax.default_backend(),
          "device_kind": jax.devices()[0].device_kind,
          "steps_timed": steps,
          "input_workers": workers,
          "flops_per_task": None if step_flops is None else step_flops / tasks,
          "plain_step_flops": plain_flops,
          "plain_flops_per_task": (None if plain_flops is None
                                   else plain_flops / tasks),
          "final_loss": float(np.asarray(metrics["train/loss"])),
      },
  }


def describe(result: dict) -> str:
  """The human-readable lines of a `run` result (its JSON follows them)."""
  w = result["workload"]
  plain = w["plain_flops_per_task"]
  counted = w["flops_per_task"] is not None
  return "\n".join([
      f"{w['tasks_per_step']} tasks/step, {w['devices']} {w['backend']}"
      f" device(s), chunk {w['chunk_tasks']}, support {w['support_width']},"
      + (f" {w['inner_steps']} inner steps,"
         f" {'second' if w['second_order'] else 'first'} order,"
         if w["inner_steps"] else " no inner step (one pass),")
      + f" {w['compute_dtype']}"
      + (", distilled (the teacher's targets count in the tasks/s, not on"
         " resident batches nor in the MFLOP/task)"
         if w.get("distilled") else ""),
      f"  {result['tasks_per_sec']:.0f} tasks/s"
      f" ({result['device_tasks_per_sec']:.0f} on resident batches),"
      f" {result['step_seconds'] * 1e3:.1f} ms/step, "
      + (f"{w['flops_per_task'] / 1e6:.1f} MFLOP/task" if counted
         else "FLOPs not counted by this backend")
      + ("" if plain is None else f" (plain formulation {plain / 1e6:.1f})"),
      (f"  {result['achieved_gflops']:.1f} GFLOP/s of"
       f" {result['peak_gflops']:.1f} {w['compute_dtype']} matmul peak:"
       f" utilization {result['utilization']:.1%}; " if counted
       else f"  {w['compute_dtype']} matmul peak"
       f" {result['peak_gflops']:.1f} GFLOP/s; ")
      + f"compile"
      f" {result['compile_seconds']:.1f}s; input wait"
      f" {result['input_wait_fraction']:.1%} (alone"
      f" {result['input_tasks_per_sec']:.0f} tasks/s,"
      f" {w['input_workers']} thread(s)); peak RSS"
      f" {result['peak_rss_mb']:.0f} MB"])
