"""SIGTERM and SIGINT as exceptions, held back where a swap is half done.

With the default action a SIGTERM ends the process on the spot: an export,
a task store or a ratings file being written leaves its temporary folder
(`.NAME.tmp-*`) behind, and nothing says what happened. Under
`stop_on_signals()` (the command line's, for every command) SIGTERM raises
`Terminated` and SIGINT `KeyboardInterrupt` in the main thread, so the
writers' `with` blocks remove their temporary files on the way out and the
command ends with one line.

A signal that arrives inside `uninterrupted()` is raised when the block
ends: the two renames that swap a new folder in for an existing one
(`atomic.Folder.finish`) are never split, which an exception between them
would do, leaving neither the old folder nor the new one in place.

Training installs its own handlers around its loop (`workdir.preemption`:
finish the step, save, exit), and uvicorn around serving; both put these
back when they end.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(BaseException):
  """The process received SIGTERM (a `BaseException`, like
  `KeyboardInterrupt`: no `except Exception` swallows it)."""

  def __init__(self, signum: int = signal.SIGTERM):
    self.signum = signum
    super().__init__(signal.Signals(signum).name)


_held = {"depth": 0, "pending": None}  # main-thread state of the handler


def _raise_for(signum: int) -> None:
  if signum == signal.SIGINT:
    raise KeyboardInterrupt
  raise Terminated(signum)


def _handle(signum, frame) -> None:
  del frame
  if _held["depth"]:
    _held["pending"] = signum
    return
  _raise_for(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
  """SIGTERM raises `Terminated`, SIGINT `KeyboardInterrupt`, inside the
  block (main thread only; elsewhere the block changes nothing). The
  previous handlers come back afterwards."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {sig: signal.signal(sig, _handle)
              for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
  """Holds back the exception of a signal received inside the block (under
  `stop_on_signals`) until the block has ended."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _held["depth"] += 1
  try:
    yield
  finally:
    _held["depth"] -= 1
    pending = _held["pending"]
    if not _held["depth"] and pending is not None:
      _held["pending"] = None
      _raise_for(pending)
