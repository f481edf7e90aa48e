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
import os
import select
import signal
import stat
import sys
import threading
from typing import Callable, Iterator, NoReturn


class Terminated(BaseException):
  """The process received SIGTERM (a `BaseException`, like
  `KeyboardInterrupt`: no `except Exception` swallows it)."""

  def __init__(self, signum: int = signal.SIGTERM):
    self.signum = signum
    super().__init__(signal.Signals(signum).name)


_held = {"depth": 0, "pending": None}  # main-thread state of the handler
# What an abrupt end (below) still does first: each writer's removal of
# its temporary folder (`atomic.Folder`), by a key of its own.
_cleanups: dict[int, Callable[[], None]] = {}
_prog = {"name": "metarec"}  # the command, for the line an abrupt end prints
_stopped = {"signum": None}  # the signal `_raise_for` last raised for


def add_cleanup(fn: Callable[[], None]) -> int:
  """Registers `fn` to run if a swallowed signal ends the process at once
  (`_end_where_swallowed`); returns the key that `remove_cleanup` takes."""
  key = id(fn)
  _cleanups[key] = fn
  return key


def remove_cleanup(key: int) -> None:
  """Forgets what `add_cleanup` registered under `key`."""
  _cleanups.pop(key, None)


def _raise_for(signum: int) -> None:
  _stopped["signum"] = signum
  if signum == signal.SIGINT:
    raise KeyboardInterrupt
  raise Terminated(signum)


def _handle(signum, frame) -> None:
  del frame
  if _held["depth"]:
    _held["pending"] = signum
    return
  _raise_for(signum)


def _end_where_swallowed(previous_hook):
  """A `sys.unraisablehook` that ends the process where a signal's
  exception was swallowed: raised inside a garbage-collector callback or a
  `__del__` (JAX's `_xla_gc_callback` is one), Python prints "Exception
  ignored in ..." and goes on, and the stop would be lost. Delivering it
  again does not work (it lands in the hook, whose exceptions are ignored
  too), so the process ends at once, as the signal's default action did,
  after the writers' cleanups (`add_cleanup`: no temporary folder is left
  behind) and with the line the command prints for a stop (a temporary
  file a killed writer leaves is removed by the next writer of its
  destination)."""

  def hook(args):
    exc = args.exc_value
    if isinstance(exc, (Terminated, KeyboardInterrupt)):
      signum = (exc.signum if isinstance(exc, Terminated)
                else signal.SIGINT)
      for fn in list(_cleanups.values()):
        try:
          fn()
        except Exception:  # pylint: disable=broad-except
          pass  # the end comes anyway; the next writer removes the rest
      sys.stdout.flush()
      what = "interrupted" if signum == signal.SIGINT else "terminated"
      print(f"{_prog['name']}: {what} ({signal.Signals(signum).name})",
            file=sys.stderr, flush=True)
      os._exit(128 + int(signum))  # pylint: disable=protected-access
    previous_hook(args)

  return hook


def end_at_once() -> None:
  """Makes `end_program` end the process at once, as after a signal: when
  memory ran out in one device's part of a step, the other devices'
  threads of a multi-device CPU run still wait in the step's collective,
  and Python's finalization waited for them until XLA aborted the process
  (exit 134, 60 s after the error's line)."""
  _stopped["at_once"] = True


def end_program(status: int) -> NoReturn:
  """Ends the program with `status`; where a signal stopped the command
  (`status` is 128 + the signal `stop_on_signals` raised for), at once
  after flushing the output (`os._exit`): XLA may still be compiling in
  threads of its own, and Python's finalization under them crashed
  `metarec serve` stopped during its start-up (a segmentation fault, exit
  139, in about one SIGTERM in seven with an empty compilation cache).
  What the command wrote is already removed or complete by then."""
  signum = _stopped["signum"]
  if (signum is not None and status == 128 + int(signum)) or _stopped.get(
      "at_once"):
    for stream in (sys.stdout, sys.stderr):
      if stream is not None:  # (None: started with it closed)
        stream.flush()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)


def status_of(main: Callable[[], int]) -> int:
  """`main()`'s exit status, or 128 + SIGPIPE where it stopped because
  stdout's reader went away (`metarec --help | head -1`): the status of a
  program that signal ended, with no traceback, since nobody is left to
  read the output. stdout then points at /dev/null, so that Python's exit
  has nothing to flush (which would print "Exception ignored ...
  BrokenPipeError"). A `BrokenPipeError` while stdout's pipe is whole (a
  socket's) propagates. Where stdout cannot be written otherwise
  (`> /dev/full`: no space), one line says so and the status is 1: the
  commands report their own OSErrors inside `main`, so one reaching here
  is of the output of `main` itself (its help) or of the last flush."""
  try:
    status = main()
    # Where stdout is a pipe or a file Python buffers it (unless
    # PYTHONUNBUFFERED): its last write happens here, not inside `main`.
    if sys.stdout is not None:  # (None: started with stdout closed)
      sys.stdout.flush()
  except BrokenPipeError:
    if not _reader_gone(sys.stdout):
      raise
    _stdout_to_devnull()
    return 128 + int(signal.SIGPIPE)
  except OSError as e:
    _stdout_to_devnull()
    try:
      print("metarec: error: cannot write the output: "
            f"{os.strerror(e.errno) if e.errno else e}", file=sys.stderr)
    except (OSError, AttributeError):
      pass  # stderr too: the status says it
    return 1
  return status


def _stdout_to_devnull() -> None:
  """Points stdout at /dev/null: Python's exit then has nothing to flush
  (which would print "Exception ignored ..." and exit 120)."""
  if sys.stdout is not None:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _reader_gone(stream) -> bool:
  """Whether `stream` is a pipe whose reading end is closed (poll reports
  an error on its writing end); where that cannot be asked, whether it is
  a pipe at all."""
  try:
    fd = stream.fileno()
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
      return False
    poll = select.poll()
  except (OSError, ValueError, AttributeError):
    return False
  poll.register(fd, select.POLLOUT)
  return any(event & select.POLLERR for _, event in poll.poll(0))


@contextlib.contextmanager
def stop_on_signals(prog: str = "metarec") -> Iterator[None]:
  """SIGTERM raises `Terminated`, SIGINT `KeyboardInterrupt`, inside the
  block (main thread only; elsewhere the block changes nothing). The
  previous handlers come back afterwards. `prog`: the command, as the
  line of an abrupt end names it (the line the command prints for a stop,
  `metarec export: terminated (SIGTERM)`)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _prog["name"] = prog
  previous = {sig: signal.signal(sig, _handle)
              for sig in (signal.SIGTERM, signal.SIGINT)}
  previous_hook = sys.unraisablehook
  ours = sys.unraisablehook = _end_where_swallowed(previous_hook)
  try:
    yield
  finally:
    inner = sys.unraisablehook
    sys.unraisablehook = previous_hook
    rewrap = getattr(inner, "_metarec_rewrap", None)
    if inner is not ours and rewrap is not None:
      # A filter installed in the block outlives it, over the hook from
      # before (orbax_logs: a failed restore's reads are finalized at
      # exit, and printed ~3,800 lines of tracebacks after the one-line
      # error when it was dropped here).
      sys.unraisablehook = rewrap(previous_hook)
    for sig, handler in previous.items():
      signal.signal(sig, handler)


@contextlib.contextmanager
def default_action(restore: tuple[int, ...] = (signal.SIGTERM,
                                               signal.SIGINT)
                   ) -> Iterator[None]:
  """SIGTERM and SIGINT end the process at once inside the block (their
  default action), for a wait inside C++ (JAX's `distributed.initialize`)
  where no Python handler runs until it returns: there is nothing to clean
  up, and a handler would only postpone the stop by minutes.

  When the block ends normally only the handlers of `restore` come back:
  `jax.distributed.initialize` installs its own SIGTERM handler (the
  preemption notifier, on which every process agrees on the step to save
  at), which putting ours back would replace.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {sig: signal.signal(sig, signal.SIG_DFL)
              for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  except BaseException:
    restore = tuple(previous)
    raise
  finally:
    for sig in restore:
      signal.signal(sig, previous[sig])


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
