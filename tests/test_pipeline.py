"""The input pipeline: batches built by worker threads, handed over in order."""

import os
import threading

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from metarec_jax import backend
from metarec_jax.data.pipeline import Prefetcher
from metarec_jax.errors import InputError


class FakeSampler:
  """`batch(step)`: a pure function of the step; counts its calls and, for
  the first `meet` calls, waits until `meet` of them run at once."""

  def __init__(self, meet: int = 0, fail_at: int | None = None):
    self.calls, self.fail_at = [], fail_at
    self.lock = threading.Lock()
    self.barrier = threading.Barrier(meet, timeout=20) if meet else None
    self.meet = meet

  def batch(self, step: int) -> dict:
    with self.lock:
      self.calls.append(step)
      first = len(self.calls) <= self.meet
    if first:
      self.barrier.wait()  # BrokenBarrierError unless `meet` run at once
    if step == self.fail_at:
      raise InputError(f"bad rows in step {step}", path="ratings.csv")
    tasks = jax.device_count() * 2
    return {"x": np.full((tasks, 3), step, np.int32),
            "y": np.arange(tasks, dtype=np.float32) * step}


@pytest.fixture
def sharding():
  return NamedSharding(Mesh(np.array(jax.devices()), ("tasks",)),
                       PartitionSpec("tasks"))


@pytest.mark.parametrize("workers,depth", [(1, 2), (3, 1), (4, 6)])
def test_batches_arrive_in_step_order_equal_to_the_sampler(
    sharding, workers, depth):
  sampler = FakeSampler()
  pipeline = Prefetcher(sampler, sharding, start=5, stop=17, depth=depth,
                        workers=workers)
  try:
    got = list(pipeline)
  finally:
    pipeline.close()
  assert [step for step, _ in got] == list(range(5, 17))
  for step, batch in got:
    want = FakeSampler().batch(step)
    assert batch["x"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(batch["x"]), want["x"])
    np.testing.assert_array_equal(np.asarray(batch["y"]), want["y"])
  assert sorted(sampler.calls) == list(range(5, 17))


def test_workers_build_batches_at_the_same_time(sharding):
  # Four builders must be inside `batch` together, or the barrier breaks.
  sampler = FakeSampler(meet=4)
  pipeline = Prefetcher(sampler, sharding, start=0, stop=8, workers=4)
  try:
    assert [step for step, _ in pipeline] == list(range(8))
  finally:
    pipeline.close()


def test_a_failed_batch_raises_its_own_error_in_order(sharding):
  pipeline = Prefetcher(FakeSampler(fail_at=3), sharding, start=0, stop=9,
                        workers=3)
  try:
    assert [next(pipeline)[0] for _ in range(3)] == [0, 1, 2]
    with pytest.raises(InputError, match="bad rows in step 3"):
      next(pipeline)
  finally:
    pipeline.close()


def test_close_stops_building(sharding):
  sampler = FakeSampler()
  pipeline = Prefetcher(sampler, sharding, start=0, stop=10_000, depth=3,
                        workers=2)
  next(pipeline)
  pipeline.close()
  built = len(sampler.calls)
  assert built <= 1 + 3 + 2  # the one taken, the ones in flight
  assert len(sampler.calls) == built  # nothing after close
  with pytest.raises(StopIteration):
    next(pipeline)


def test_a_deep_prefetch_of_a_short_run_queues_only_its_steps(
    sharding, monkeypatch):
  # depth=10**9 ran a billion-iteration loop in the constructor (train
  # sat at its first step for a minute; `config_reference` now also caps
  # the key). Counted, not timed: the constructor asks for 3 steps.
  submits = []
  submit = Prefetcher._submit  # pylint: disable=protected-access

  def counted(self):
    submits.append(1)
    assert len(submits) <= 10, "queued far more steps than the run has"
    submit(self)

  monkeypatch.setattr(Prefetcher, "_submit", counted)
  pipeline = Prefetcher(FakeSampler(), sharding, start=3, stop=6,
                        depth=10**9)
  try:
    assert len(submits) == 3
    assert [step for step, _ in pipeline] == [3, 4, 5]
  finally:
    pipeline.close()


def test_input_workers_resolve_per_backend():
  assert backend.input_workers(3) == 3
  assert backend.input_workers(0, "cpu") == 1
  assert backend.input_workers(0, "gpu") == min(12, os.cpu_count())
