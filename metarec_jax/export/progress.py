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

from metarec_jax.train.progress import show_bar


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
    self._stop = None
    if not self.plain:
      self._bar = rich_progress.Progress(
          rich_progress.TextColumn("export {task.completed}/{task.total}"
                                   " users"),
          rich_progress.BarColumn(), rich_progress.TextColumn("ETA"),
          rich_progress.TimeRemainingColumn(),
          console=self.console, transient=False)
      self._task = self._bar.add_task("export", total=self.total)
      self._stop = show_bar(self._bar, self.log)

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
    if self._stop is not None:
      self._stop()
      self._stop = self._bar = None

  def __enter__(self) -> "UserProgress":
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False
