"""`Trainer`: everything the loop needs, built once (also `metarec bench`).

The experiment, the mesh and shardings, the sampler, the jitted init and
the meta-step compiled per batch shape, the schedule's length as an array
and distillation's teacher; `check_batch_size` validates how the tasks of
a step split over devices and chunks.
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import numpy as np

from metarec_jax import backend, experiment, runtime
from metarec_jax.data.sampler import TrainSampler
from metarec_jax.data.tasks import batch_shapes
from metarec_jax.errors import InputError
from metarec_jax.meta import members as members_lib
from metarec_jax.meta import paths
from metarec_jax.train import distill, placement
from metarec_jax.train.step import make_train_step
from metarec_jax.workdir import optim
from metarec_jax.workdir import state as state_lib

log = logging.getLogger("metarec")


def resolve_chunk(config, num_devices: int) -> int:
  """Tasks per device per chunk (`train.chunk_tasks`, 0 = automatic).

  `num_devices` counts the task shards (devices / `mesh.model`): the
  devices of one `model` group share their tasks.

  Automatic: the backend's `backend.defaults().chunk_tasks` (16 on CPU,
  the whole per-device batch on accelerators; the reasons are there).
  """
  per_device = int(config.train.tasks_per_step) // num_devices
  chunk = int(config.train.chunk_tasks)
  if chunk <= 0:
    chunk = backend.defaults().chunk_tasks or per_device
    chunk = math.gcd(chunk, per_device) or per_device
  return min(chunk, per_device)


def check_batch_size(config, num_devices: int) -> int:
  """Validates `train.tasks_per_step` over `num_devices` task shards;
  returns the chunk size."""
  tasks = int(config.train.tasks_per_step)
  model = int(config.mesh.model)
  # With a model axis the tasks split over its groups, not every device.
  shards, per = ((f"{num_devices} task shards ({num_devices * model}"
                   f" devices / mesh.model={model})", "shard") if model > 1
                  else (f"{num_devices} devices", "device"))
  if tasks <= 0 or tasks % num_devices:
    raise InputError(
        f"train.tasks_per_step={tasks} must be a positive multiple of the"
        f" {shards}")
  chunk = resolve_chunk(config, num_devices)
  if (tasks // num_devices) % chunk:
    raise InputError(
        f"train.tasks_per_step={tasks} over {shards} is"
        f" {tasks // num_devices} tasks per {per}, not a multiple of"
        f" train.chunk_tasks={chunk}")
  return chunk


def check_host_memory(config, batch, processes: int) -> None:
  """Refuses a `train.tasks_per_step` whose batches in flight would take
  more than half of this host's memory (`batch`: one step's abstract
  batch, over `processes` hosts): at 100,000,000 tasks the input pipeline
  grew past 23 GB until the kernel killed the run (exit 137, no line).
  In flight: the prefetched batches (`train.prefetch`, or one per input
  worker), the one the step reads and the one being built."""
  host = runtime.host_memory_bytes()
  per_batch = sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
                  for leaf in jax.tree.leaves(batch)) / processes
  in_flight = max(int(config.train.prefetch), backend.input_workers(
      int(config.train.input_workers))) + 2
  if host and per_batch * in_flight > host / 2:
    raise InputError(
        f"train.tasks_per_step={int(config.train.tasks_per_step):,}: its"
        f" {in_flight} batches in flight ({per_batch / 2**30:.2f} GiB each)"
        f" would take more than half of this host's {host / 2**30:.1f} GiB"
        " of memory; lower train.tasks_per_step")


class Trainer:
  """Everything the loop needs, built once (also used by `metarec bench`)."""

  def __init__(self, config, workdir: str, *,
               exp: experiment.Experiment | None = None,
               chunk_tasks: int | None = None, devices=None):
    """`chunk_tasks` overrides the config's (-1: no chunking at all);
    `devices` (default: all) are the devices to run on."""
    self.config = config
    self.workdir = workdir
    self.mesh = runtime.make_mesh(int(config.mesh.model), devices)
    self.num_devices = self.mesh.devices.size
    shards = runtime.task_shards(self.mesh)
    self.chunk = check_batch_size(config, shards)
    if chunk_tasks is not None:
      self.chunk = (int(config.train.tasks_per_step) // shards
                    if chunk_tasks < 0 else int(chunk_tasks))
    self.exp = exp or experiment.build(config, workdir, log=log.info)
    # (The state's structure does not depend on the hyperparameters.)
    self.optimizer = optim.outer_optimizer(
        optim.hyperparams(config.train),
        stacked=members_lib.stacked(self.exp.model.loss_fn))
    self.replicated = runtime.replicated(self.mesh)
    self.task_sharding = runtime.task_sharding(self.mesh)
    self.sampler = TrainSampler(
        self.exp.split, self.exp.tables, self.exp.store.items,
        self.exp.store.ratings, self.exp.sampler_spec(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        negative_sampler=self.exp.negative_sampler())
    check_host_memory(config, self.abstract_batch(max(self.sampler.widths)),
                      jax.process_count())
    init = functools.partial(state_lib.create, self.exp.model,
                             self.exp.meta_config, self.optimizer)
    # Where every state leaf lives (`placement.RULES`): replicated, or a
    # large table split by rows over the `model` axis.
    # The state's shapes, traced once: every abstract state below is these
    # shapes with a placement (each trace of the model's init costs a
    # fraction of a second at every start).
    self.shapes = shapes = jax.eval_shape(lambda: init(self.rng()))
    min_rows = int(config.mesh.shard_min_rows)
    self.state_shardings = placement.shardings(shapes, self.mesh,
                                               min_rows=min_rows)
    self.split = placement.check_not_adapted(
        shapes.params["model"], self.exp.meta_config.adapt, self.mesh,
        min_rows=min_rows)
    ragged = placement.ragged_paths(shapes.params["model"], self.mesh,
                                    min_rows=min_rows)
    if ragged:
      model = self.mesh.shape[runtime.MODEL_AXIS]
      log.warning("stays replicated: mesh.model=%d does not divide the rows"
                  " of %s (%s)", model, ", ".join(p for p, _ in ragged),
                  placement.padding_advice(min(r for _, r in ragged), model))
    if self.split:
      log.info("split over mesh.model=%d devices (with their optimizer"
               " state): %s", self.mesh.shape[runtime.MODEL_AXIS],
               ", ".join(self.split))
    # Evaluation runs on the 1-D mesh of the same devices with replicated
    # parameters (`eval_params`): the same program as `metarec eval`.
    self.eval_mesh = (self.mesh if runtime.MODEL_AXIS not in self.mesh.shape
                      else runtime.make_mesh(1, self.mesh.devices.flat))
    self.init = jax.jit(init, out_shardings=self.state_shardings)
    step = make_train_step(self.exp.model.loss_fn, self.exp.meta_config,
                           self.mesh, chunk_tasks=self.chunk,
                           query_loss_fn=self.exp.model.query_loss_fn,
                           meta_fixed=self.exp.model.meta_fixed,
                           unadapted_weight=float(
                               config.train.unadapted_weight))
    # `step(state, batch, hyper)`: the hyperparameters are an argument, so
    # the program is the same for any `train.num_steps`, `train.lr`, ...
    self.step = runtime.CompiledByShape(
        jax.jit(step, donate_argnums=(0,),
                out_shardings=(self.state_shardings, self.replicated)),
        name="train_step")
    self.hyper = self.hyper_args(config.train)
    # Distillation blends a teacher's predictions into the query ratings:
    # `load_teacher` (a resume's checkpoint says which of the teacher's).
    self.teacher: distill.Teacher | None = None

  def load_teacher(self, pinned: dict | None = None) -> None:
    """Loads `distill.teacher` (if any): the checkpoint of it that `pinned`
    names (`distill.load`), else its default one."""
    self.teacher = distill.load(self.config, self.exp, self.mesh, pinned)

  def prepare(self, batch):
    """The batch the meta-step trains on (the teacher's targets blended in
    when distilling)."""
    return self.teacher(batch) if self.teacher is not None else batch

  def rng(self) -> jax.Array:
    return jax.random.PRNGKey(int(self.config.train.seed))

  def abstract_state(self):
    """The state's structure (`state.abstract`), placed as it trains."""
    return jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                 sharding=sharding),
        self.shapes, self.state_shardings)

  def eval_params(self, meta_params):
    """`meta_params` replicated on `eval_mesh` (as they are, on a 1-D
    mesh)."""
    if self.eval_mesh is self.mesh:
      return meta_params
    return jax.device_put(meta_params, runtime.replicated(self.eval_mesh))

  def abstract_eval_params(self):
    """The abstract `eval_params` (for compiling the validation)."""
    replicated = runtime.replicated(self.eval_mesh)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        self.shapes.params)

  def param_shapes(self) -> dict[str, tuple]:
    params = self.abstract_state().params
    return {p: (tuple(l.shape), str(l.dtype)) for p, l in
            zip(paths.leaf_paths(params), jax.tree.leaves(params))}

  def hyper_args(self, train_config, horizon: int | None = None
                 ) -> optim.Hyperparams:
    """`optim.hyperparams(train_config, horizon)` as the step's replicated
    arguments (made from host data on every process: nothing is
    compiled)."""
    return jax.tree.map(
        lambda v: jax.make_array_from_callback((), self.replicated,
                                               lambda _: v),
        optim.hyperparams(train_config, horizon))

  def abstract_hyper(self) -> optim.Hyperparams:
    return jax.tree.map(
        lambda v: jax.ShapeDtypeStruct((), v.dtype, sharding=self.replicated),
        optim.hyperparams(self.config.train))

  def abstract_batch(self, width: int):
    support, query = self.sampler.spec.padded_widths(width)
    return batch_shapes(self.exp.tables.specs,
                        int(self.config.train.tasks_per_step), support,
                        query, self.task_sharding)

  def compile_jobs(self) -> list:
    """One job per bucket that compiles the meta-step for it (and the
    teacher's targets, when distilling)."""
    state = self.abstract_state()
    jobs = [functools.partial(self.step.compile, state,
                              self.abstract_batch(width),
                              self.abstract_hyper())
            for width in self.sampler.widths]
    if self.teacher is not None:
      jobs += [functools.partial(self.teacher.compile,
                                 self.abstract_batch(width))
               for width in self.sampler.widths]
    return jobs

  def compile_all(self, should_stop=lambda: False) -> bool:
    """Compiles the meta-step for every bucket, checking `should_stop`
    between compilations. Returns False if it stopped early."""
    return runtime.run_compile_jobs(self.compile_jobs(),
                                       should_stop=should_stop)
