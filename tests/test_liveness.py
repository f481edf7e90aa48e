"""The liveness watch of a joined run (`metarec_jax.liveness`), with a fake
coordination service (the real one: test_multiprocess.py)."""

import math
import re
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


class LiveService:
  """A coordination service that answers at once; process 0 counts on."""

  def __init__(self):
    self.n = 0

  def key_value_set(self, *_, **__):
    pass

  def key_value_dir_get(self, _):
    self.n += 1
    return [(liveness.KEY.format(0), str(self.n))]


def _hold_the_gil(seconds: float) -> float:
  """Holds the GIL for about `seconds` in one go (a regex that backtracks:
  `re` never releases it); returns how long the last hold lasted, at
  least 0.6 of `seconds`: each character doubles the time, and one
  estimated from a short hold fell short where the machine's load
  changed (1.7 s of 4 in a CI run), so a short hold is followed by a
  longer one."""
  n, held = 18, 0.0
  while held < 0.6 * seconds:
    start = time.monotonic()
    re.match(r"(a+)+$", "a" * n + "b")
    held = time.monotonic() - start
    n += max(1, math.ceil(math.log2(seconds / max(held, 1e-4))))
  return held


def test_a_process_that_stalls_itself_does_not_blame_process_0():
  """This process's main thread holding the GIL for longer than the
  timeout stalled the watch's threads too: the deadline, counting from
  the service's last answer, blamed process 0 (4 of 6 runs, reviewer R)."""
  said = []
  watch = liveness.Watch(LiveService(), 1, 2, timeout=1.0,
                         give_up=lambda *a, **k: said.append(a)).start()
  time.sleep(1.5)
  held = _hold_the_gil(4.0)
  time.sleep(2.5)
  watch.stop()
  assert held > 2.0, held  # (the stall the test is about)
  assert said == []


def test_ending_in_order_beside_a_frozen_process_0_does_not_hang():
  """`done` waited for the watch's call in flight and then made its own,
  each held forever by a frozen process 0: the process never ended."""
  service, said = FrozenService(), []
  watch = liveness.Watch(service, 1, 2, timeout=1.0,
                         give_up=lambda *a, **k: said.append(a)).start()
  time.sleep(1.5)  # a call in flight
  ending = threading.Thread(target=watch.done, daemon=True)
  ending.start()
  ending.join(6.0)  # (a regression fails here rather than hang the suite)
  alive = ending.is_alive()
  service.release.set()
  assert not alive
  # ... and it ends the process in one line, not in JAX's shutdown, which
  # waits on the frozen service and aborts 100 s later (reviewer R2).
  (problem, status), = said
  assert problem.startswith("process 1: process 0 of the run (the"
                            " coordination service) did not answer as this"
                            " process ended its run in order") and status == 1
