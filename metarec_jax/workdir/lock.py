"""One trainer per work directory: an exclusive `flock` on WORKDIR/train.lock.

`metarec train` holds the lock from before it writes anything in the work
directory until it has finished writing (the last checkpoint committed). A
second trainer on the same work directory stops at once with one line naming
the holder's host and pid, and changes nothing there. The kernel releases
the lock when the holder's file descriptor closes, also on `kill -9` or a
crash, so there is never a stale lock to remove by hand. The file stays:
while the lock is held it names the holder (for the error message), and a
release empties it again, so a run that trains nothing (already finished)
leaves the work directory as it found it. After a `kill -9` it still names
the killed holder, but the lock is free. The one exception: a start that
made the work directory and fails before writing anything in it (its
data refused while the store is built) removes the lock file and the
folder again, so that a typo's run leaves nothing behind
(`remove_if_unused`); a trainer that opened the file just before it was
removed takes the lock again on a new one.

In a multi-process run only process 0 takes the lock (every run has exactly
one process 0, so two runs still exclude each other whatever their process
counts) and tells the others its verdict through the coordination service,
so the processes of a refused run all stop with the same error. The
others then read process 0's record in their own `WORKDIR/train.lock`: a
process that does not find it there within `SHARED_WAIT_S` is not sharing
the folder (each host given its own disk's path), which made every
checkpoint save wait forever for the others' part, deaf to SIGTERM, so
it stops the run with one line. `metarec eval` and `export` only read,
and never take it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import time
from typing import Iterator

import jax

from metarec_jax import atomic, runtime
from metarec_jax.errors import InputError, OutputError, writing

LOCK_FILE = "train.lock"
# How long a process looks for process 0's lock record in the work
# directory (a shared file system may show a new write late).
SHARED_WAIT_S = 30.0
log = logging.getLogger("metarec")


class WorkdirInUse(InputError):
  """Another trainer holds the work directory's lock."""


class WorkdirLock:
  """An exclusive, non-blocking `flock` on `WORKDIR/train.lock`."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._fd: int | None = None
    self.record = ""  # what this holder wrote in the file

  def acquire(self) -> "WorkdirLock":
    """Takes the lock, or raises `WorkdirInUse` naming the holder.

    On a filesystem without `flock` (ENOLCK, ENOSYS, EOPNOTSUPP: e.g. a
    Lustre mount without `-o flock`, some FUSE mounts) it warns and goes on
    unlocked, as before the lock existed.
    """
    while True:
      fd = self._open()
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        return self._refused(fd, e)
      try:  # the file this lock is on may have been removed since opened
        if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
          break
      except FileNotFoundError:
        pass
      os.close(fd)
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.datetime.now(datetime.timezone.utc)
              .isoformat(timespec="seconds"), "run": os.urandom(8).hex()}
    self.record = json.dumps(record)
    self._fd = fd  # held, also where the record fails: `hold` then
    # removes what the start made. (A full disk: `pwrite`'s error names no
    # file, `writing` names the lock's.)
    with writing(self.path):
      os.ftruncate(fd, 0)
      os.pwrite(fd, (self.record + "\n").encode(), 0)
    return self

  def _open(self) -> int:
    """A descriptor of the lock file, made where missing (and its folder,
    where a failed start removed it: `remove_if_unused`)."""
    # No O_TRUNC: a refused trainer must leave the holder's record intact.
    atomic.refuse_non_file(self.path, "a work directory's train.lock is"
                           " the file `metarec train` locks")
    try:
      return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

  def _refused(self, fd: int, e: OSError) -> "WorkdirLock":
    """Raises `WorkdirInUse` naming the holder where another trainer holds
    the lock; elsewhere (no flock on this filesystem) warns and goes on
    unlocked."""
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      os.close(fd)
      log.warning("cannot lock %s (%s): this filesystem has no flock, so"
                  " nothing stops a second trainer on this work"
                  " directory", self.path, e.strerror or e)
      return self
    holder = _describe(_read(fd))
    os.close(fd)
    raise WorkdirInUse(
        f"in use by another trainer ({holder}; lock file {LOCK_FILE});"
        " wait for it to finish or stop it first",
        path=os.path.dirname(self.path)) from None

  def remove_if_unused(self, top: str) -> None:
    """Removes the lock file and its folder, while holding the lock, where
    the folder holds nothing else (a new work directory whose first start
    failed before writing anything), and the empty folders above it up to
    `top` (the first that the start made)."""
    folder = os.path.dirname(self.path)
    if self._fd is None or os.listdir(folder) != [LOCK_FILE]:
      return
    try:
      os.unlink(self.path)
    except OSError:
      return
    _remove_empty(folder, top)

  def release(self) -> None:
    """Empties the holder's record and releases the lock (closing the
    descriptor releases the flock)."""
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> bool:
    self.release()
    return False


def _remove_empty(folder: str, top: str) -> None:
  """Removes `folder` and the folders above it up to `top` while they are
  empty (rmdir fails where a racing start wrote into one: kept)."""
  try:
    os.rmdir(folder)
    while folder != top and folder.startswith(top + os.sep):
      folder = os.path.dirname(folder)
      os.rmdir(folder)
  except OSError:
    pass


def _find_record(path: str, record: str) -> None:
  """Raises InputError where the lock file at `path` does not come to hold
  process 0's `record` within `SHARED_WAIT_S`."""
  deadline = time.monotonic() + SHARED_WAIT_S
  while True:
    try:
      with open(path, encoding="utf-8") as f:
        if f.read().strip() == record:
          return
    except (OSError, ValueError):
      pass
    if time.monotonic() > deadline:
      raise InputError(
          f"process {jax.process_index()} does not see process 0's work"
          f" directory: its {LOCK_FILE} does not name process 0 as the"
          f" trainer after {SHARED_WAIT_S:g} s; --workdir must be one folder"
          " that every process shares (a shared file system, the same path"
          " on every host)", path=os.path.dirname(path))
    time.sleep(0.2)


def _read(fd: int) -> dict:
  try:
    record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
  except (OSError, ValueError):  # being rewritten by a new holder
    return {}
  return record if isinstance(record, dict) else {}


def _describe(record: dict) -> str:
  if "host" not in record or "pid" not in record:
    return "holder unknown"
  since = f", since {record['since']}" if record.get("since") else ""
  return f"host {record['host']}, pid {record['pid']}{since}"


@contextlib.contextmanager
def hold(workdir: str, *, made: str | None = None) -> Iterator[None]:
  """Holds the training lock of `workdir` for the block, for a run of one or
  several processes (process 0 locks; every process gets its verdict).
  `made`: the first folder of `workdir` that the run made (None: it was
  there); if the block fails with nothing written there, a run of one
  process removes what it made again.

  Raises:
    WorkdirInUse: another trainer holds it (on every process of the run).
  """
  lock = WorkdirLock(workdir)
  refusal = ""
  if runtime.is_lead():
    try:
      lock.acquire()
    except WorkdirInUse as e:
      refusal = e.message
    except OutputError:  # its record not written (a full disk)
      if made and jax.process_count() == 1:
        lock.remove_if_unused(os.path.abspath(made))
      lock.release()
      raise
  refusal = runtime.from_lead("workdir lock", refusal)
  if refusal:
    raise WorkdirInUse(refusal)
  record = runtime.from_lead("workdir lock record", lock.record)
  if record and not runtime.is_lead():  # "": no flock, nothing written
    try:
      _find_record(lock.path, record)
    except InputError:  # this host's own folder: the one it made goes
      if made:
        _remove_empty(os.path.abspath(workdir), os.path.abspath(made))
      raise
  try:
    yield
  except BaseException:
    # (With several processes another may still write there.)
    if made and jax.process_count() == 1:
      lock.remove_if_unused(os.path.abspath(made))
    raise
  finally:
    lock.release()
