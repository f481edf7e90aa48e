"""Stopping cleanly on SIGTERM / SIGINT (preemption, Ctrl-C).

The handler only records the signal; the loop asks `stop(step)` between
jitted calls (training steps, evaluation batches, compilations), finishes
what it is doing, saves and exits. In a multi-process run the processes must
agree on the step to save at, so there the decision comes from JAX's
preemption sync point (SIGTERM is then JAX's to catch; it reaches every
process from the cluster manager), and a SIGINT to any process is passed
on to it as a SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading


class StopRequest:
  """Context manager; call it with the current step to ask whether to stop."""

  def __init__(self):
    self.received: int | None = None
    self._previous = {}
    self._multi_process = False

  def __enter__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self._multi_process = jax.process_count() > 1
    if threading.current_thread() is threading.main_thread():
      sigs = (signal.SIGINT,) if self._multi_process else (signal.SIGTERM,
                                                           signal.SIGINT)
      for sig in sigs:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self._multi_process:
      # Stopped here alone, this process would go into the save's
      # collectives while the others run the next step's: all hang. As
      # JAX's preemption notice (SIGTERM), the stop reaches the sync point
      # every process agrees on.
      os.kill(os.getpid(), signal.SIGTERM)
      return
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def now(self) -> bool:
    """Whether this process received a signal (no collective: for checks
    inside evaluation and compilation, which every process may not share)."""
    return self.received is not None

  def __call__(self, step: int) -> bool:
    """Whether to stop after training step `step` (agreed by all processes)."""
    if self.received is not None:
      return True
    if self._multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(int(step)):
        self.received = signal.SIGTERM
        return True
    return False
