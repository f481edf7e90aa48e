"""Noticing a process of a joined run that stopped (killed, its host lost).

Every collective waits for every process. Where one is killed, the others
wait inside gloo (or NCCL) until JAX's coordination service has missed its
heartbeats for 100 s, and then abort with a fatal C++ log and a stack
trace that says "another task died" (exit 134): it names neither the
process nor what to do, and no Python code can catch it. So each process
of a run keeps a `Watch`: a daemon thread that counts up this process's
key in the coordination service's key-value store every `TICK_S` seconds
and reads the others'. Where another process's count has not moved for
`timeout` seconds, or the coordination service (hosted by process 0)
cannot be reached, the watch ends this process with one line naming the
process and how to resume, exit status 1 (`os._exit`: the main thread may
be inside a collective that no exception reaches). A process that ends its
run in order says so first (`Watch.done`), so that the others never take
its exit for a death. One that fails with an error of its own (its data
refused on one host only) says that error (`Watch.fail`): the others end
with it, naming the process, and the same exit status, instead of
blaming a dead host `timeout` seconds later; process 0 leaves last
(`Watch.leave`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

TICK_S = 1.0
DONE = "done"
FAILED = "failed:"  # + "STATUS:the error's line"
GONE = "metarec/gone/{}"  # said by a process about to exit on a failure
# How long process 0 waits for the others to leave on a failure: they read
# every TICK_S.
FAIL_WAIT_S = 10.0
PREFIX = "metarec/alive/"
KEY = PREFIX + "{}"
RESTART = ("start every process again with the same command to resume from"
           " the last checkpoint")


class Watch:
  """The liveness watch of process `process_id` of `num_processes` (see the
  module docstring); `give_up(problem, status, leave=False)` ends the
  process (`leave`: after `Watch.leave`)."""

  def __init__(self, client: Any, process_id: int, num_processes: int, *,
               timeout: float, give_up: Callable[..., None],
               where: str = "the run"):
    self.client = client
    self.process_id = process_id
    self.others = [i for i in range(num_processes) if i != process_id]
    self.timeout = timeout
    self.give_up = give_up
    self.where = where
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name="liveness")
    self._calling = None  # when `_run`'s call in flight began (None: none)

  def start(self) -> "Watch":
    self._thread.start()
    if self.process_id:  # (process 0 hosts the service it would wait on)
      threading.Thread(target=self._deadline, daemon=True,
                       name="liveness-deadline").start()
    return self

  def _call(self, method: str, *args, **kwargs):
    """`client.method(...)`, noting when the call began (`_deadline`)."""
    self._calling = time.monotonic()
    try:
      return getattr(self.client, method)(*args, **kwargs)
    finally:
      self._calling = None

  def _deadline(self) -> None:
    """Ends this process where a call of `_run` to the coordination service
    (process 0's) has waited `timeout` seconds: a frozen process 0, or a
    host lost without closing its connections, holds the call, and with it
    `_run`'s own timeout check (JAX aborted 84 s later with a C++ stack
    trace, at --peer_timeout=10). A round after which this thread itself
    woke late judges no one: this process was stalled (its main thread
    holding the GIL), not the service."""
    woke = time.monotonic()
    while not self._stop.wait(TICK_S):
      now, since = time.monotonic(), self._calling
      late, woke = now - woke > 2 * TICK_S, now
      if not late and since is not None and now - since > self.timeout:
        self.give_up(
            f"process {self.process_id}: process 0 of {self.where} (the"
            f" coordination service) has not answered for {self.timeout:g}"
            f" s (--peer_timeout: it was stopped or lost its host; see its"
            f" log); this process stops too: {RESTART}", 1)
        return

  def stop(self) -> None:
    """Stops counting (the others will notice within `timeout` unless
    `done` was said); waits at most `timeout` for the watch's call in
    flight (a frozen process 0 holds it)."""
    self._stop.set()
    if (self._thread.is_alive()
        and self._thread is not threading.current_thread()):
      self._thread.join(self.timeout)

  def _tell(self, key: str, value: str) -> bool:
    """Sets `key` in the service, waiting at most `timeout` seconds;
    returns False where the call is still held then (a frozen process 0).
    A call that fails is no matter: the service is gone, and so is every
    process that could read it."""
    def tell():
      try:
        self.client.key_value_set(key, value, allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except
        pass
    thread = threading.Thread(target=tell, daemon=True, name="liveness-tell")
    thread.start()
    thread.join(self.timeout)
    return not thread.is_alive()

  def done(self) -> None:
    """Stops counting and tells the others that this process ended its
    run in order; where process 0 holds that call (frozen, its host
    lost), ends this process in one line: JAX's shutdown would wait on it
    and abort with a C++ stack trace 100 s later (reviewer R2)."""
    self.stop()
    if not self._tell(KEY.format(self.process_id), DONE):
      self.give_up(
          f"process {self.process_id}: process 0 of {self.where} (the"
          " coordination service) did not answer as this process ended"
          f" its run in order (it was stopped or lost its host): {RESTART}"
          " (a run that had finished then says so)", 1)

  def fail(self, problem: str, status: int) -> None:
    """Stops counting and tells the others that this process fails with
    `problem` (one line) and exit status `status` (the key outlives the
    process: process 0 hosts the service)."""
    self.stop()
    self._tell(KEY.format(self.process_id), f"{FAILED}{status}:{problem}")

  def leave(self) -> None:
    """Before this process exits on a failure: another than process 0
    says it is gone; process 0, whose exit ends the coordination service
    and so aborts every process still connected (a C++ stack trace, exit
    134, before or instead of its line), waits until every other has said
    so (at most `FAIL_WAIT_S`)."""
    try:
      if self.process_id:
        self._tell(GONE.format(self.process_id), "1")
        return
      deadline = time.monotonic() + FAIL_WAIT_S
      while time.monotonic() < deadline:
        gone = dict(self.client.key_value_dir_get(GONE.format("")))
        if all(GONE.format(i) in gone for i in self.others):
          time.sleep(TICK_S / 5)  # for their exits to complete
          return
        time.sleep(TICK_S / 10)
    except Exception:  # pylint: disable=broad-except
      pass

  def _heard(self, i: int, value: str) -> None:
    """Ends this process with process `i`'s failure `value` (`FAILED`)."""
    status, _, problem = value[len(FAILED):].partition(":")
    self.give_up(f"process {self.process_id}: process {i} of {self.where}"
                 f" stopped: {problem}", int(status) if status.isdigit()
                 else 1, leave=True)

  def _run(self) -> None:
    start = time.monotonic()
    seen = {i: (None, start) for i in self.others}  # (count, when it moved)
    count = 0
    while not self._stop.wait(TICK_S):
      count += 1
      try:
        self._call("key_value_set", KEY.format(self.process_id), str(count),
                   allow_overwrite=True)
      except Exception as e:  # pylint: disable=broad-except
        if self._stop.is_set():
          return
        self.give_up(
            f"process {self.process_id}: lost the coordination service of"
            f" {self.where} (process 0 stopped, or its host:"
            f" {first_line(e)}); {RESTART}", 1)
        return
      now = time.monotonic()
      try:  # one request for all of them, whatever the number of processes
        counts = dict(self._call("key_value_dir_get", PREFIX))
      except Exception:  # pylint: disable=broad-except
        continue  # unread is not unmoved: judge no one on a failed read
      for i in list(seen):
        value = counts.get(KEY.format(i))  # None: not counting yet
        if value == DONE:
          del seen[i]
        elif value is not None and value.startswith(FAILED):
          if not self._stop.is_set():
            self._heard(i, value)
          return
        elif value != seen[i][0]:
          seen[i] = (value, now)
        elif now - seen[i][1] > self.timeout and not self._stop.is_set():
          self.give_up(
              f"process {self.process_id}: process {i} of {self.where} has"
              f" not answered for {self.timeout:g} s (--peer_timeout: it was"
              " killed, failed or lost its host; see its log); this process"
              f" stops too: {RESTART}", 1)
          return


def first_line(error: Exception) -> str:
  """The first line of an error's message (its repr where it says
  nothing): a coordination-service error's, a bug's (`cluster`)."""
  text = str(error).strip()
  return text.splitlines()[0] if text else repr(error)
