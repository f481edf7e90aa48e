"""The input pipeline: batches built in a background thread, placed on the mesh.

Assembling a batch (numpy gathers) and copying it to the devices overlaps
the previous meta-step. Each process builds only its slice of the global
batch; `jax.make_array_from_process_local_data` stitches the slices into
one global array sharded over the task axis.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import jax
from jax.sharding import NamedSharding

from metarec_jax.data.sampler import TrainSampler

_DONE = object()


def to_global(batch: Any, sharding: NamedSharding) -> Any:
  """Process-local numpy slices -> global arrays sharded on axis 0."""
  return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(sharding, a), batch)


class Prefetcher:
  """Iterates `(step, batch)` for `start <= step < stop`, `depth` ahead.

  Attributes:
    wait_seconds: total time the consumer waited for a batch (the input
      pipeline's share of a step is `wait_seconds / steps`).
  """

  def __init__(self, sampler: TrainSampler, sharding: NamedSharding, *,
               start: int, stop: int, depth: int = 2):
    self.sampler, self.sharding = sampler, sharding
    self.queue: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
    self.wait_seconds = 0.0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(start, stop),
                                    name="metarec-input", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self.queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self, start: int, stop: int) -> None:
    try:
      for step in range(start, stop):
        if self._stop.is_set():
          return
        batch = to_global(self.sampler.batch(step), self.sharding)
        if not self._put((step, batch)):
          return
      self._put(_DONE)
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)

  def __iter__(self):
    return self

  def __next__(self):
    t0 = time.perf_counter()
    item = self.queue.get()
    self.wait_seconds += time.perf_counter() - t0
    if item is _DONE:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)

