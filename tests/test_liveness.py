"""The liveness watch of a joined run (`metarec_jax.liveness`), with a fake
coordination service (the real one: test_multiprocess.py)."""

import threading
import time

from metarec_jax import liveness


class FrozenService:
  """A coordination service whose host froze: its calls never return."""

  def __init__(self):
    self.release = threading.Event()

  def key_value_set(self, *_, **__):
    self.release.wait()

  def key_value_dir_get(self, *_):
    self.release.wait()
    return []


def test_a_frozen_coordination_service_ends_the_process_in_one_line():
  """A frozen process 0 (kill -STOP, a host lost without closing its
  connections) held the watch inside its call, before its own timeout
  check: nothing was said until JAX aborted with a C++ stack trace."""
  service, said = FrozenService(), []
  ended = threading.Event()

  def give_up(problem, status, leave=False):
    said.append((problem, status, leave))
    ended.set()

  watch = liveness.Watch(service, 1, 2, timeout=1.0, give_up=give_up,
                         where="the run at host0:1234").start()
  start = time.monotonic()
  try:
    assert ended.wait(10)
  finally:
    service.release.set()
    watch.stop()
  assert 1.0 < time.monotonic() - start < 5.0
  (problem, status, _), = said
  assert problem.startswith("process 1: process 0 of the run at host0:1234"
                            " (the coordination service) has not answered"
                            " for 1 s (--peer_timeout")
  assert status == 1
