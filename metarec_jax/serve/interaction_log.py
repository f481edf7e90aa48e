"""The interaction log: every accepted rating, durable before it is
acknowledged, in the export's own input format.

    LOG_DIR/interactions.EXT   the ratings, one line each, in the format of
                               the ratings file the export was made from
                               (MovieLens `user::item::rating` lines for a
                               MovieLens export, the generic columns
                               otherwise), so `metarec train` and `metarec
                               export` read it back (see the README's loop)
    LOG_DIR/lock               flock'ed by the server that owns the folder

`append` writes a batch of ratings and fsyncs once (group commit); a write
that fails is cut back off, so the file only ever holds whole lines. A line
cut short by a crash (written, never fsynced, so never acknowledged) is
dropped when the log is opened again.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import time
import unicodedata

import numpy as np

from metarec_jax import atomic
from metarec_jax.data.convert import parsing, ratings_io
from metarec_jax.data.convert.ratings_io import RatingsFormat
from metarec_jax.errors import InputError, OutputError, cause_of

log = logging.getLogger("metarec")

LOG_NAME = "interactions"
LOCK_NAME = "lock"


def default_dir(export_dir: str) -> str:
  """`EXPORT-interactions`, beside the export folder (a re-export replaces
  the export folder, never the log)."""
  return os.path.abspath(export_dir).rstrip(os.sep) + "-interactions"


def export_format(export_dir: str
                  ) -> tuple[RatingsFormat, parsing.FileClock | None]:
  """The ratings format of an export's input and the clock of its lines'
  times (`parsing.clock_of_file`; None: no times), from its manifest.
  Exports written before the manifest recorded the format get the generic
  CSV columns (`user,item,rating`), before it recorded the clock epoch
  seconds.

  Raises:
    InputError: not an export folder.
  """
  # Plain JSON, not `export.layout`: that package imports JAX, and the log
  # is locked before anything slow happens (`export.load` checks the rest).
  # A damaged manifest is named, as `export.load` names it (it was called
  # "not a metarec export" of the folder).
  path = os.path.join(export_dir, "manifest.json")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise InputError("not a metarec export (no manifest.json)",
                     path=export_dir) from None
  except (OSError, ValueError) as e:
    raise InputError(f"unreadable manifest: {e}", path=path) from None
  try:
    manifest["rating_min"], manifest["rating_max"]  # pylint: disable=pointless-statement
  except (KeyError, TypeError):
    raise InputError("not a metarec export manifest", path=path) from None
  if "ratings_format" in manifest:
    unit = manifest.get("ratings_clock") or (
        "seconds" if manifest.get("ratings_timestamps") else None)
    clock = unit and parsing.FileClock(unit, manifest.get("ratings_latest"))
    return RatingsFormat.from_json(manifest["ratings_format"]), clock
  kind = lambda name: "int" if np.load(
      os.path.join(export_dir, name), mmap_mode="r").dtype.kind in "iu" else (
          "str")
  return RatingsFormat(rating_min=float(manifest["rating_min"]),
                       rating_max=float(manifest["rating_max"]),
                       user_id_type=kind("users.npy"),
                       item_id_type=kind("items.npy"),
                       **ratings_io.DEFAULT_FORMAT), None


def _unreadable(c: str) -> bool:
  """A character the log's reader would drop, strip or split on."""
  return (unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")
          or c in "\ufeff\ufffd")


def _holds_ratings(path: str) -> bool:
  """Whether a file may hold ratings: more than one line, or one with a
  digit (a log of only its header, a server no one taught, holds none)."""
  try:
    with open(path, "rb") as f:
      head = f.read(1 << 16)
  except OSError:  # a folder of that name, no permission: not a log
    return False
  lines = head.splitlines()
  return len(lines) > 1 or any(c in b"0123456789" for c in head)


class LogMoved(OSError):
  """The log's path no longer names the open file: no write can succeed
  until the server is started again."""


class InteractionLog:
  """An open, locked interaction log folder.

  Raises (on construction):
    InputError: the folder is locked by another server, or cannot be made.
  """

  def __init__(self, folder: str, fmt: RatingsFormat, *,
               clock: parsing.FileClock | None = None):
    self.folder = os.path.abspath(folder)
    self.format = fmt
    # The time of each line, where the export's file had times: written in
    # its clock, so that the file and the log joined read in time order.
    self.clock = clock if fmt.timestamp is not None else None
    self.path = os.path.join(self.folder, f"{LOG_NAME}.{fmt.extension}")
    # What this start makes, for `discard` to remove where the start is
    # refused (a damaged export left an empty EXPORT-interactions/ behind).
    made = atomic.first_missing(self.folder)
    self._made = [made] if made else [
        p for p in (os.path.join(self.folder, LOCK_NAME), self.path)
        if not os.path.lexists(p)]
    try:
      os.makedirs(self.folder, exist_ok=True)
      self._lock = os.open(os.path.join(self.folder, LOCK_NAME),
                           os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise InputError(f"cannot use the log folder: {e.strerror}",
                       path=self.folder) from None
    try:
      fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(self._lock)
      raise InputError("the log folder is locked by another server; stop it"
                       " or give this one another --log_dir",
                       path=self.folder) from None
    self._refuse_another_formats_log()
    self._header = self._text([], [], []) if fmt.header else ""
    try:
      self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND,
                         0o644)
    except OSError as e:  # a folder of that name, no permission
      os.close(self._lock)  # and the lock goes with the refusal
      raise InputError(f"cannot use the interaction log: {e.strerror}",
                       path=self.path) from None
    self._drop_torn_tail()
    self.size = os.fstat(self._fd).st_size
    if self.size == 0 and self._header:
      try:
        self._write(self._header.encode(fmt.encoding))
      except OSError as e:  # a full disk: `os.write` names no file
        self.discard()
        raise OutputError(self.path, cause_of(e)) from e
    elif self._header:
      self._follow_header()
    # The log's name (and its folder's, if just made) on disk too: an
    # acknowledged line must survive the machine's crash, not only ours.
    atomic.fsync_dir(self.folder)
    atomic.fsync_dir(os.path.dirname(self.folder))

  def _refuse_another_formats_log(self) -> None:
    """Raises `InputError` (the lock let go) where the folder holds the log
    of an export of another input format: its ratings would be neither
    replayed nor served, and a user's new ratings would start a second log
    beside them."""
    mine = os.path.basename(self.path)
    others = sorted(n for n in os.listdir(self.folder)
                    if n.startswith(LOG_NAME + ".") and n.count(".") == 1
                    and n != mine and _holds_ratings(
                        os.path.join(self.folder, n)))
    if others:
      for path in self._made:
        if os.path.basename(path) == LOCK_NAME:
          atomic.remove(path)
      os.close(self._lock)
      raise InputError(
          f"the log folder holds {others[0]}, the log of an export of"
          f" another input format (this export's log is {mine}), whose"
          " ratings this server would neither replay nor serve; serve it"
          " with an export of that format, or give this one another"
          " --log_dir", path=self.folder)

  def _follow_header(self) -> None:
    """New lines follow the header the log began with, where that is not
    this export's (an earlier export's, or written before stores recorded
    the dataset's columns) but holds the same roles.

    Raises:
      InputError: it does not (the log is closed).
    """
    with open(self.path, "rb") as f:
      first = f.readline().decode(self.format.encoding, "replace")
    first = first.rstrip("\r\n")
    if first == self._header.rstrip("\n"):
      return
    mine, names = self._header.strip(), first.split(self.format.delimiter)
    roles = {getattr(self.format, r) for r in ("user", "item", "rating")}
    self.format = dataclasses.replace(self.format, columns=tuple(names))
    self._header = self._text([], [], [])
    if self._header.rstrip("\n") != first or not roles - {None} <= set(
        names):
      self.close()
      raise InputError(f"its header {first!r} is not this export's {mine!r}"
                       ": give the server another --log_dir", path=self.path)

  def check_user_id(self, user) -> None:
    """Raises ValueError if the id would not read back from the log as
    itself (and so as the user the ratings were acknowledged for)."""
    text = str(user)
    delimiter = self.format.delimiter
    problem = None
    odd = next((c for c in text if _unreadable(c)), None)
    # Before the padding: str.strip() strips line breaks, U+2028 and
    # U+001C-U+001F too, which were called "padded with spaces".
    if odd is not None:
      problem = (f"holds U+{ord(odd):04X}, a control character or line"
                 " separator (NUL, a line break...), a byte order mark or"
                 " U+FFFD (a byte that was not UTF-8)")
    elif not text or text != text.strip():
      problem = "is empty or padded with spaces"
    elif not self.format.quoted and set(delimiter) & set(text):
      # Nothing is quoted with a delimiter of several characters or with
      # data.generic.quoting=none: `zed:` then `::` would read back as
      # `zed` and `:item`, `x,y` as two fields (and the write failed the
      # whole batch). Else the log quotes a field that holds the
      # delimiter, as CSV does, and reads it back.
      problem = (f"holds {delimiter[0]!r}, which a log split on"
                 f" {delimiter!r} does not quote")
    else:
      try:
        text.encode(self.format.encoding)
      except UnicodeEncodeError:
        problem = f"is not {self.format.encoding} text"
    if problem:
      raise ValueError(f"user id {text!r} cannot be logged: it {problem}")

  def _text(self, users, items, ratings) -> str:
    stamps = None
    if self.clock:
      stamps = np.full(len(users), parsing.now_in(self.clock, time.time()))
    return ratings_io.format_ratings(np.asarray(users), np.asarray(items),
                                     np.asarray(ratings, np.float64),
                                     self.format, stamps)

  def _drop_torn_tail(self) -> None:
    """Cuts off a last line without its newline (a write a crash cut
    short, never acknowledged), saying so: it was cut in silence, and a
    line appended by hand without one went the same way. Reads the end
    only (the whole log was read into memory at every start)."""
    size = end = os.fstat(self._fd).st_size
    keep = 0
    with open(self.path, "rb") as f:
      while end > 0:
        start = max(0, end - (1 << 16))
        f.seek(start)
        block = f.read(end - start)
        if end == size and block.endswith(b"\n"):
          return
        if (cut := block.rfind(b"\n")) >= 0:
          keep = start + cut + 1
          break
        end = start
    if keep < size:
      os.ftruncate(self._fd, keep)
      os.fsync(self._fd)
      log.warning("%s: cut off its last line, %d byte(s) without a newline"
                  " (a write a crash cut short, never acknowledged)",
                  self.path, size - keep)

  def _write(self, data: bytes) -> None:
    # The path must still name the open file: where the folder or the file
    # was removed (or replaced) by hand, appends went to a file no start
    # reads back, and were acknowledged (a second server could start on
    # the path meanwhile).
    try:
      here = os.stat(self.path)
    except OSError:
      here = None
    if here is None or not os.path.samestat(here, os.fstat(self._fd)):
      raise LogMoved(errno.ENOENT, f"{self.path}, the open log, was removed"
                     " or replaced")
    try:
      view = memoryview(data)
      while view:
        view = view[os.write(self._fd, view):]
      os.fsync(self._fd)
    except OSError:
      # Whole lines only: cut a partial write back off before failing.
      os.ftruncate(self._fd, self.size)
      raise
    self.size += len(data)

  def append(self, users, items, ratings) -> None:
    """Appends ratings (external ids) and fsyncs once for all of them."""
    text = self._text(users, items, ratings)[len(self._header):]
    self._write(text.encode(self.format.encoding))

  def read(self) -> ratings_io.Ratings | None:
    """The logged ratings in file order, or None for an empty log.

    Raises:
      InputError: a line that is not a rating, naming the file and line.
    """
    with open(self.path, "rb") as f:
      data = f.read()
    if not data.strip() or data.decode(
        self.format.encoding, "replace").strip() == self._header.strip():
      return None
    return ratings_io.parse_ratings(self.path, self.format)

  def close(self) -> None:
    """Closes the log and releases its lock."""
    os.close(self._fd)
    os.close(self._lock)  # releases the lock

  def discard(self) -> None:
    """Closes the log of a start that was refused, removing the folders and
    files it made (the log's, unless the log holds more than its header)."""
    empty = self.size <= len(self._header.encode(self.format.encoding))
    for path in self._made:  # before the lock is let go, as `atomic` does
      if empty or os.path.basename(path) == LOCK_NAME:
        atomic.remove(path)
    self.close()
