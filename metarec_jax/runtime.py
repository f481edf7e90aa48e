"""How the program runs on devices: the mesh, CPU devices, compilation.

Batches come in a small fixed set of shapes (one per support bucket). The
trainer compiles each shape before the first step (`CompiledByShape.compile`
with abstract arguments) and then only calls compiled executables, so a long
run never compiles again; `compiles` counts what was compiled, for the tests
and the benchmark.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from metarec_jax import config_defaults
from metarec_jax.errors import InputError

AXIS = "tasks"
MODEL_AXIS = "model"  # devices that split the large embedding tables


def enable_compilation_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache, so restarts skip compiling.

  `path` defaults to `$METAREC_COMPILATION_CACHE`, else
  `$XDG_CACHE_HOME/metarec_jax/xla` (`~/.cache/...`); an empty
  `METAREC_COMPILATION_CACHE` turns the cache off. Returns the folder used.
  """
  if path is None:
    path = os.environ.get("METAREC_COMPILATION_CACHE")
    if path is None:
      base = os.environ.get("XDG_CACHE_HOME",
                            os.path.join(os.path.expanduser("~"), ".cache"))
      path = os.path.join(base, "metarec_jax", "xla")
  if not path:
    return None
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  # The meta-step compiles in seconds; cache everything that takes longer
  # than a blink.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


# How long a process waits for the others at a barrier. A process compiling
# its programs while another loads them from its persistent compilation
# cache arrives minutes later (configs/default.py took 9 minutes to compile
# on a loaded 2-core machine). A process that dies ends the wait sooner: the
# coordination service fails the barrier once its heartbeat stops (seen
# after 95 s).
BARRIER_TIMEOUT_S = 60 * 60


def is_lead() -> bool:
  """Whether this is process 0 (the only one, in a single-process run)."""
  return jax.process_index() == 0


def _coordination_client():
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.multihost.get_jax_distributed_client()


_KEY_USES: collections.Counter = collections.Counter()


def _key(name: str) -> str:
  """The coordination service's key of this process's next use of `name`:
  a key can be set and a barrier passed once, and a name can come again
  (a distilling run builds the teacher's experiment beside its own, whose
  task store check used "task store data" first: ALREADY_EXISTS)."""
  _KEY_USES[name] += 1
  uses = _KEY_USES[name]
  return f"metarec/{name}" + (f"#{uses}" if uses > 1 else "")


def sync_processes(name: str) -> None:
  """Waits until every process of a multi-process run reaches `name`.

  A barrier of the coordination service (`jax.distributed`), not a
  collective: a gloo collective, and the gloo connection set up by a
  program's first collective, give up after 30 seconds, which a process
  still compiling easily exceeds. Every process must pass the same names in
  the same order (a name passed again is another barrier, `_key`).
  """
  if jax.process_count() > 1:
    _coordination_client().wait_at_barrier(_key(name),
                                           BARRIER_TIMEOUT_S * 1000)


def from_lead(name: str, value: str) -> str:
  """Process 0's `value` on every process (this process's own value in a
  single-process run), through the coordination service's key-value store.
  """
  if jax.process_count() == 1:
    return value
  key = _key(name)
  if is_lead():
    _coordination_client().key_value_set(key, value)
    return value
  return _coordination_client().blocking_key_value_get(
      key, BARRIER_TIMEOUT_S * 1000)


def to_host(x):
  """An array as numpy, also across processes: a replicated one from its
  first local copy, one split over local devices (the `model` axis, which
  never leaves a process) from its local shards."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shards = x.addressable_shards
    if shards[0].data.shape == x.shape:  # a whole copy
      return np.asarray(shards[0].data)
    out = np.empty(x.shape, x.dtype)
    for shard in shards:
      out[shard.index] = np.asarray(shard.data)
    return out
  return np.asarray(x)


def check_model_axis(model: int, *, devices: int, local_devices: int) -> None:
  """Raises `InputError` unless `model` devices can form the model axis:
  it must divide the devices of each process (a table's shards stay on one
  host, so reading it back never needs another process)."""
  if model < 1 or local_devices % model or devices % model:
    divisors = [d for d in range(1, local_devices + 1)
                if not local_devices % d and not devices % d]
    raise InputError(
        f"mesh.model={model} must divide the {local_devices} devices of each"
        f" process ({devices} in all): --config.mesh.model="
        f"{' or '.join(map(str, divisors))} (a run saved on more devices"
        " resumes with any of them)")


def make_mesh(model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """The device mesh: `tasks` over every device of every process, or, with
  `model` > 1, a 2-D mesh `(tasks, model)` whose `model` groups are
  `model` consecutive devices of one process (see `check_model_axis`).

  `devices` (default: all) builds it over a subset, e.g. to resume a
  checkpoint on fewer devices within one process.
  """
  if model == 1 and devices is None:
    return jax.make_mesh((jax.device_count(),), (AXIS,),
                         axis_types=(jax.sharding.AxisType.Auto,))
  import numpy as np  # pylint: disable=g-import-not-at-top
  devices = list(jax.devices() if devices is None else devices)
  if model == 1:
    return Mesh(np.array(devices, dtype=object), (AXIS,),
                axis_types=(jax.sharding.AxisType.Auto,))
  local = [d for d in devices if d.process_index == jax.process_index()]
  check_model_axis(model, devices=len(devices), local_devices=len(local))
  devices.sort(key=lambda d: (d.process_index, d.id))
  grid = np.array(devices, dtype=object).reshape(-1, model)
  return Mesh(grid, (AXIS, MODEL_AXIS),
              axis_types=(jax.sharding.AxisType.Auto,) * 2)


def task_shards(mesh: Mesh) -> int:
  """How many ways the task axis of a batch is split."""
  return int(mesh.shape[AXIS])


def task_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (task) axis split over the mesh."""
  return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A whole copy of an array on every device of `mesh`."""
  return NamedSharding(mesh, P())


def place(tree: Any, sharding: NamedSharding) -> Any:
  """Host arrays every process holds in full -> global sharded arrays."""
  return jax.tree.map(
      lambda a: jax.make_array_from_callback(a.shape, sharding,
                                             lambda idx: a[idx]), tree)


def with_model_leaves(meta_params: Any, values: dict[str, Any]) -> Any:
  """`meta_params` with the leaves of `meta_params["model"]` named in
  `values` set to those host values, each shaped, typed and placed as the
  leaf it replaces (built from host data on every process: nothing is
  compiled). For what validation fits and training never moves."""
  model = dict(meta_params["model"])
  for name, value in values.items():
    old = model[name]
    model[name] = place(np.asarray(value, old.dtype).reshape(old.shape),
                        old.sharding)
  return {**meta_params, "model": model}


def cpu_cores() -> int:
  """The CPU cores this process may run on (its affinity mask)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def configure_cpu_devices(count: int, tasks_per_step: int,
                          model: int = 1) -> None:
  """Splits the host CPU into `count` JAX devices (0 = automatic).

  Must run before JAX initialises its backends. One device per core lets
  each core run its own shard of the meta-batch instead of all of them
  contending inside every small batched matmul (measured: 1.5x on two
  cores). Automatic: `model` (`mesh.model`) times the most task shards, at
  most one device per core in all (at least one shard), that divide
  `tasks_per_step`; where that exceeds `MAX_CPU_DEVICES`, the shards alone
  (`check_model_axis` then refuses `model`, naming the devices). Does
  nothing when the user already chose
  (`XLA_FLAGS=--xla_force_host_platform_device_count`).
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    if count:  # asked for in the config, and not what will run
      logging.getLogger("metarec").warning(
          "train.cpu_devices=%d is ignored: XLA_FLAGS sets"
          " --xla_force_host_platform_device_count, which wins", count)
    return
  if not count:
    shards = max(cpu_cores() // max(model, 1), 1)
    while shards > 1 and tasks_per_step % shards:
      shards -= 1
    count = shards * max(model, 1)
    if count > config_defaults.MAX_CPU_DEVICES:
      count = shards
  try:
    jax.config.update("jax_num_cpu_devices", int(count))
  except RuntimeError:  # backends already started (e.g. inside a notebook)
    pass


class CompileCounter:
  """Counts XLA backend compilations while active (a context manager).

  The training loop counts from the end of its warm-up: any compilation
  after it is a shape that escaped the buckets, and is reported.

  JAX records its backend-compile event for every program it obtains, also
  for one loaded from the persistent compilation cache (which it records
  as a cache hit besides): `programs` counts both kinds, `compiled` the
  programs XLA actually compiled.
  """

  _EVENT = "/jax/core/compile/backend_compile_duration"
  _CACHE_HIT = "/jax/compilation_cache/cache_hits"

  def __init__(self):
    self.count = 0  # backend-compile events: every program obtained
    self.cache_hits = 0  # programs loaded from the persistent cache
    self._active = False

  @property
  def programs(self) -> int:
    """Programs obtained: compiled, or loaded from the persistent cache."""
    return self.count

  @property
  def compiled(self) -> int:
    """Programs compiled by XLA (not found in the persistent cache)."""
    return self.count - self.cache_hits

  def _listener(self, event, duration, **kwargs):
    del duration, kwargs
    if event == self._EVENT:
      self.count += 1

  def _hit_listener(self, event, **kwargs):
    del kwargs
    if event == self._CACHE_HIT:
      self.cache_hits += 1

  def start(self) -> "CompileCounter":
    if not self._active:
      jax.monitoring.register_event_duration_secs_listener(self._listener)
      jax.monitoring.register_event_listener(self._hit_listener)
      self._active = True
    return self

  def stop(self) -> None:
    """Stops counting; stopping a stopped counter does nothing (an error
    raised between a stop and the next start must not turn into an
    unrelated one on the way out)."""
    if self._active:
      jax.monitoring.unregister_event_duration_listener(self._listener)
      jax.monitoring.unregister_event_listener(self._hit_listener)
      self._active = False

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()
    return False


def _signature(args) -> tuple:
  leaves, treedef = jax.tree.flatten(args)
  return (treedef,) + tuple(
      (tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x))))
      for x in leaves)


def run_compile_jobs(jobs: Sequence[Callable[[], Any]], *,
                     should_stop: Callable[[], bool] = lambda: False) -> bool:
  """Runs compile jobs in order, checking `should_stop()` before each (a
  signal during the warm-up). Returns False if it stopped early.

  (Compiling them side by side on threads gained nothing on a 2-core CPU:
  XLA's CPU compiler already uses the cores.)
  """
  # Said first: on a large model with a cold cache this takes minutes, in
  # which nothing else is printed.
  logging.getLogger("metarec").info(
      "compiling before the first step (%d job(s): every shape the run"
      " meets)", len(jobs))
  for job in jobs:
    if should_stop():
      return False
    job()
  return True


class CompiledByShape:
  """Calls `jitted` through one compiled executable per input signature."""

  def __init__(self, jitted: Callable, *, name: str):
    self.jitted = jitted
    self.name = name
    self.executables: dict[tuple, Any] = {}
    self.compiles = 0
    self.compile_seconds = 0.0

  def compile(self, *args) -> Any:
    """Compiles for `args` (arrays or `jax.ShapeDtypeStruct`s) if needed."""
    key = _signature(args)
    if key not in self.executables:
      t0 = time.perf_counter()
      self.executables[key] = self.jitted.lower(*args).compile()
      self.compile_seconds += time.perf_counter() - t0
      self.compiles += 1
      # Every process compiles the same shapes in the same order. Wait here
      # for the slowest (an empty compilation cache), where waiting costs
      # nothing, rather than in the program's first collective.
      sync_processes(f"compiled {self.name} {self.compiles}")
    return self.executables[key]

  def __call__(self, *args):
    return self.compile(*args)(*args)


def peak_rss_mb() -> float | None:
  """This process's peak resident memory in MB (None where unknown)."""
  try:
    import resource  # pylint: disable=g-import-not-at-top
  except ImportError:  # not on this platform
    return None
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # kilobytes on Linux, bytes on macOS
  return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def host_memory_bytes() -> int | None:
  """This host's physical memory in bytes (None where unknown)."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, OSError, ValueError):
    return None
