"""Export progress on stderr: a rich bar on a terminal, log lines elsewhere.

Plain lines (CI, a log file, a pipe) come after the first chunk and then at
most every `every_seconds`:

    exported 2048/100000 users (5120 users/s)
"""

from __future__ import annotations

import logging
import time

from rich import progress as rich_progress
from rich.console import Console
from rich.file_proxy import FileProxy


class UserProgress:
  """`advance(n)` after each chunk of users; `close()` at the end."""

  def __init__(self, total: int, *, console: Console | None = None,
               log: logging.Logger | None = None,
               every_seconds: float = 5.0):
    self.total = int(total)
    self.done = 0
    self.console = console or Console(stderr=True)
    self.log = log or logging.getLogger("metarec")
    self.every_seconds = every_seconds
    self.plain = not self.console.is_terminal or self.console.is_dumb_terminal
    self._start = time.perf_counter()
    self._last_line = None
    self._bar = None
    self._swapped = []
    if not self.plain:
      self._bar = rich_progress.Progress(
          rich_progress.TextColumn("export {task.completed}/{task.total}"
                                   " users"),
          rich_progress.BarColumn(), rich_progress.TextColumn("ETA"),
          rich_progress.TimeRemainingColumn(),
          console=self.console, transient=False)
      self._task = self._bar.add_task("export", total=self.total)
      self._route_logs()
      self._bar.start()

  def advance(self, n: int) -> None:
    self.done += int(n)
    if self._bar is not None:
      self._bar.update(self._task, completed=self.done)
      return
    now = time.perf_counter()
    if (self._last_line is None or self.done >= self.total
        or now - self._last_line >= self.every_seconds):
      self._last_line = now
      rate = self.done / max(now - self._start, 1e-9)
      self.log.info("exported %d/%d users (%.0f users/s)", self.done,
                    self.total, rate)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.stop()
      self._bar = None
    for handler, stream in self._swapped:
      handler.setStream(stream)
    self._swapped = []

  def _route_logs(self) -> None:
    # A log record written straight to the terminal would tear the live
    # bar; rich's FileProxy prints whole lines above it instead.
    for handler in self.log.handlers:
      if (isinstance(handler, logging.StreamHandler)
          and not isinstance(handler, logging.FileHandler)
          and handler.stream is self.console.file):
        proxy = FileProxy(self.console, handler.stream)
        self._swapped.append((handler, handler.setStream(proxy)))

  def __enter__(self) -> "UserProgress":
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False
