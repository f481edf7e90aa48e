"""Writes that are all or nothing: a file or a folder appears complete, or not.

Every file or folder the engine writes for a user (config.json, metrics
summaries, ratings files, task stores, exports, task folders, plots) is
built at a temporary path beside its destination and renamed into place, so
a killed process never leaves a half-written one behind (and one stopped by
SIGTERM or Ctrl-C, see `interrupts`, leaves no temporary one either). A
write that fails
(a full disk) removes its temporary file or folder and raises an
`OutputError` naming the destination and the cause; arrays filled through
a memory map have their disk space reserved first, so a full disk is an
error, never a SIGBUS. A rename is made durable by syncing the folder that
holds it (`fsync_dir`), so that a finished write survives a power loss or a
crash of the machine, not only of the process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from typing import Any, Callable

import numpy as np

from metarec_jax.errors import InputError, OutputError, cause_of
from metarec_jax import interrupts
from metarec_jax.exchange import exchange
from metarec_jax.interrupts import uninterrupted


def fsync_dir(path: str | os.PathLike) -> None:
  """Syncs the folder `path`: the names created, renamed or removed in it
  reach the disk (a file's own fsync does not write its name). A file
  system that cannot sync a folder (EINVAL, ENOTSUP: some network and FUSE
  ones) is left as it is."""
  fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY)
  try:
    os.fsync(fd)
  except OSError as e:
    if e.errno not in (errno.EINVAL, errno.ENOTSUP):
      raise
  finally:
    os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file, fsync and a rename.

  Raises:
    OutputError: the file cannot be written (a full disk, ...); `path` is
      as it was, or, where only the sync of its folder failed, whole with
      `data` but perhaps not past a crash of the machine.
  """
  path = os.fspath(path)
  tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
  except OSError as e:
    raise OutputError(path, cause_of(e)) from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def allocate_npy(path: str | os.PathLike, dtype, shape) -> int:
  """Creates the `.npy` file `path` of `shape` with every block reserved
  on disk, so that filling it through a memory map cannot fault (SIGBUS)
  on a full disk: a disk without room fails here, as an `OSError`.

  Returns:
    The offset of the data in the file.
  """
  try:
    header = np.lib.format.open_memmap(path, mode="w+", dtype=dtype,
                                       shape=tuple(shape))
    offset = header.offset
    del header
    size = os.path.getsize(path)
    if size and hasattr(os, "posix_fallocate"):
      with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, size)
  except OSError as e:  # name the file (a failed write names none)
    # And its size: a full disk is often the symptom of a size asked for
    # (`data synth --num_users=100000000000`: "No space left" alone).
    size = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    raise OSError(e.errno, f"{cause_of(e)} (the file takes {size:,} bytes)",
                  os.fspath(path)) from e
  return offset


def refuse_other(out: str | os.PathLike, is_earlier: Callable[[str], bool],
                 message: str) -> None:
  """Raises `InputError(message)` naming `out` where `out` exists and is
  neither an empty folder nor one `is_earlier` recognises: a writer
  replaces only what it wrote itself, never a user's own file or folder
  (a data folder given as the output by mistake)."""
  out = os.fspath(out)
  if os.path.lexists(out) and not (
      os.path.isdir(out) and (not os.listdir(out) or is_earlier(out))):
    raise InputError(message, path=out)


def first_missing(path: str) -> str | None:
  """The topmost folder (or file) of `path` that does not exist yet, None
  where `path` exists: what a writer making `path` creates first."""
  missing = None
  while not os.path.lexists(path):
    missing, path = path, os.path.dirname(path)
  return missing


def refuse_file_in_the_way(path: str | os.PathLike, *, named: str) -> None:
  """Raises `InputError(path=named)` where a file stands at `path` or at a
  folder above it that a writer would have to create: making the folders
  failed late, with "File exists" or "Not a directory" and exit 1."""
  here = os.path.abspath(os.fspath(path))
  missing = first_missing(here)
  if missing:
    here = os.path.dirname(missing)  # the nearest folder that exists
  if os.path.islink(here) and not os.path.exists(here):
    raise InputError(f"{here} is a link to {os.readlink(here)}, which does"
                     " not exist", path=named)
  if not os.path.isdir(here):
    raise InputError(f"{here} is a file, not a folder", path=named)


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
  """Whether `path` is `folder` or lies under it, links resolved (a
  writer told to put its files there would write into `folder`)."""
  here, top = os.path.realpath(path), os.path.realpath(folder)
  return here == top or here.startswith(top.rstrip(os.sep) + os.sep)


def refuse_non_file(path: str | os.PathLike, what: str) -> bool:
  """Whether a file stands at `path`; raises `InputError` naming it where
  a folder (or another non-file) stands there, which reading or writing
  it reported late as "Is a directory", exit 1. `what` says what the file
  should be."""
  if not os.path.lexists(path):
    return False
  if not os.path.isfile(path):
    raise InputError(f"not a file: {what}", path=os.fspath(path))
  return True


def write_text(path: str | os.PathLike, text: str) -> None:
  """`write_bytes` of UTF-8 text."""
  write_bytes(path, text.encode("utf-8"))


# What writers put after the prefix: 8 hex digits (`Folder`) or 8 of
# `tempfile`'s letters (implicit `data prepare`), `old-` first for an
# output moved aside.
_OWN_SUFFIX = re.compile(r"(old-)?[0-9a-z_]{8}")


def remove_stale(prefix: str) -> None:
  """Removes what a killed writer left: every entry of `prefix`'s folder
  whose path starts with `prefix` (`.NAME.tmp-`, ...)."""
  parent, start = os.path.split(prefix)
  for entry in os.listdir(parent):
    # Only the names a writer of this output makes (`_OWN_SUFFIX`): an
    # output named `NAME.tmp-x` has a lock and a temporary folder that
    # start with `prefix` too, and its writer may be running.
    if entry.startswith(start) and _OWN_SUFFIX.fullmatch(
        entry[len(start):]):
      remove(os.path.join(parent, entry))


def restore_moved_aside(out: str, prefix: str) -> None:
  """Puts back the output a writer moved aside (`PREFIX` + `old-*`) and was
  killed before it renamed its new folder in: where nothing stands at
  `out`, that is the last complete output, not a stale temporary (only
  where the system has no one-step `exchange`). The caller holds the lock."""
  if os.path.lexists(out):
    return
  parent, start = os.path.split(prefix)
  aside = [os.path.join(parent, e) for e in os.listdir(parent)
           if e.startswith(start + "old-")
           and _OWN_SUFFIX.fullmatch(e[len(start):])]
  if aside:
    os.rename(max(aside, key=lambda p: os.lstat(p).st_ctime), out)
    fsync_dir(parent)


def remove(path: str) -> None:
  """Removes the folder, file or symbolic link `path`, if any (a link, not
  what it points to: `shutil.rmtree` refuses links, and its ignored error
  would leave one behind)."""
  if os.path.islink(path) or os.path.isfile(path):
    with contextlib.suppress(FileNotFoundError):
      os.unlink(path)
  else:
    shutil.rmtree(path, ignore_errors=True)


def _try_lock(path: str) -> int | None:
  """An open descriptor of `path` holding its exclusive `flock`, or None
  where another process holds it. A holder removes the file before it lets
  go, so a lock taken on a file since removed is tried again on the new
  one (otherwise two writers could each hold a lock of their own)."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return None
    try:
      if os.fstat(fd).st_ino == os.stat(path).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)


class Exclusive:
  """One writer at a time: an exclusive `flock` on the file `lock_path`
  for the length of a `with` block (removed on the way out; a killed
  holder's lock dies with it). A second writer is refused at `__enter__`
  with an `InputError` naming `out`, what the lock guards."""

  def __init__(self, lock_path: str, out: str):
    self.lock_path, self.out = lock_path, out
    self._fd = None

  def __enter__(self):
    self._fd = _try_lock(self.lock_path)
    if self._fd is None:
      raise InputError("another process is writing it now; wait for it to"
                       " finish or choose another output", path=self.out)
    return self

  def __exit__(self, *exc):
    if self._fd is not None:
      os.unlink(self.lock_path)  # before closing: see `_try_lock`
      os.close(self._fd)
      self._fd = None
    return False


class Folder:
  """Builds a folder beside `out` and renames it into place.

  Usage:

      with Folder(out) as folder:
        with open(folder.path("part/a.txt"), "w") as f:
          ...
        folder.finish("manifest.json", record)

  Leaving the block without `finish` (an exception) removes the temporary
  folder; one left by a killed process (`.NAME.tmp-*`) is removed by the
  next writer of the same `out`. `finish` writes the record that marks the
  folder complete, then swaps the folder in: with an existing `out` in one
  step (`exchange`), the earlier folder removed after it.

  One writer per `out`: the block holds an exclusive lock on `.NAME.lock`
  beside it (removed on the way out; a killed writer's lock dies with it),
  and a second writer is refused instead of removing the first's
  temporary folder as a stale one.
  """

  def __init__(self, out: str | os.PathLike):
    self.out = os.path.abspath(os.fspath(out))
    # Before the caller's work (export builds its writer first), not at
    # `__enter__`'s `makedirs`: "File exists", exit 1, after all of it.
    refuse_file_in_the_way(os.path.dirname(self.out), named=os.fspath(out))
    self.parent, name = os.path.split(self.out)
    self._prefix = os.path.join(self.parent, f".{name}.tmp-")
    self._lock = Exclusive(os.path.join(self.parent, f".{name}.lock"),
                           self.out)
    self.tmp = self._prefix + uuid.uuid4().hex[:8]
    self._finished = False
    self._cleanup = None  # `interrupts.add_cleanup` key while writing

  def __enter__(self):
    os.makedirs(self.parent, exist_ok=True)
    self._lock.__enter__()
    try:
      restore_moved_aside(self.out, self._prefix)
      remove_stale(self._prefix)
      os.makedirs(self.tmp)
    except BaseException:
      self._lock.__exit__(None, None, None)
      raise
    # A signal swallowed in a finalizer ends the process at once: this
    # folder goes first (`interrupts.add_cleanup`).
    self._cleanup = interrupts.add_cleanup(self._release)
    return self

  def _release(self) -> None:
    """Removes the temporary folder (gone already once `swap` renamed it)
    and lets go of the lock: on leaving the block, and on an abrupt end."""
    shutil.rmtree(self.tmp, ignore_errors=True)
    self._lock.__exit__(None, None, None)

  def __exit__(self, exc_type, exc, tb):
    interrupts.remove_cleanup(self._cleanup)
    self._release()
    name = getattr(exc, "filename", None)
    if isinstance(exc, OSError) and (
        name is None or str(name).startswith(self.tmp)):
      # A write failed (a full disk): name the file it was to become. (An
      # error naming another file is a read, and passes unchanged.)
      name = self.out + str(name)[len(self.tmp):] if name else self.out
      raise OutputError(name, cause_of(exc)) from exc
    return False

  def save_array(self, name: str, array) -> None:
    """Writes `array` as the `.npy` file `name`, its disk space reserved
    first (`allocate_npy`: a full disk is an `OSError` naming the cause,
    where `np.save` reports only a short write)."""
    array = np.asarray(array)
    if not array.size:
      np.save(self.path(name), array, allow_pickle=False)
      return
    out = self.open_array(name, array.dtype, array.shape)
    out[...] = array
    out.flush()
    del out

  def open_array(self, name: str, dtype, shape) -> np.memmap:
    """A new `.npy` file `name` of `shape`, memory-mapped for filling in
    place, its disk space reserved first (`allocate_npy`)."""
    path = self.path(name)
    allocate_npy(path, dtype, shape)
    return np.lib.format.open_memmap(path, mode="r+")

  def path(self, name: str) -> str:
    """The temporary path of the file `name`, its folders created."""
    path = os.path.join(self.tmp, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path

  def finish(self, name: str, record: dict[str, Any]) -> None:
    """Writes `record` as the JSON file `name` and swaps the folder in."""
    self.write_json(name, record)
    self.swap()

  def write_json(self, name: str, record: dict[str, Any]) -> bytes:
    """Writes `record` as the JSON file `name`, synced; returns its bytes."""
    data = json.dumps(record, indent=1, ensure_ascii=False).encode("utf-8")
    self.write_file(name, data)
    return data

  def write_file(self, name: str, data: bytes) -> None:
    """Writes the file `name` of the folder, synced."""
    with open(self.path(name), "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())

  def swap(self) -> None:
    """Renames the complete folder into place (see the class)."""
    old = None
    for folder, _, _ in os.walk(self.tmp):  # every name written inside
      fsync_dir(folder)
    # A SIGTERM between two renames would leave neither folder at `out`;
    # `exchange` has no such moment, even for SIGKILL. Where the system
    # lacks it, the next writer restores what a kill there moved aside.
    with uninterrupted():
      # `lexists`: a link (even a dangling one) is swapped too, as renaming
      # the folder onto it would fail.
      if not os.path.lexists(self.out):
        os.rename(self.tmp, self.out)
      elif exchange(self.tmp, self.out):
        old = self.tmp  # now the earlier output
      else:
        old = self._prefix + "old-" + uuid.uuid4().hex[:8]
        os.rename(self.out, old)
        os.rename(self.tmp, self.out)
      fsync_dir(self.parent)
      self._finished = True
      if old is not None:
        remove(old)
