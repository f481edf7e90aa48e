"""Progress on stderr: a rich bar on a terminal, log lines elsewhere.

Training (`Progress`): on a terminal the bar shows the step, the ETA,
tasks/s and the latest losses; log records of the `metarec` logger are
printed above it while it is shown. Anywhere else (CI, a log file, a pipe)
a bar would be noise, so each log step is one plain log line instead:

    step 200/1500  loss 0.8123  unadapted 0.9456  5120 tasks/s  about 4 min left

Export (`UserProgress`): plain lines come after the first chunk and then
at most every `every_seconds`:

    exported 2048/100000 users (5120 users/s, about 19 s left)
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

from rich import progress as rich_progress
from rich.console import Console
from rich.file_proxy import FileProxy


def _fmt(value: float | None, spec: str) -> str:
  return "n/a" if value is None else format(value, spec)


def describe(metrics: Mapping[str, float]) -> str:
  """`loss 0.8123  unadapted 0.9456  5120 tasks/s` from the step metrics."""
  loss = _fmt(metrics.get("train/loss"), ".4f")
  unadapted = _fmt(metrics.get("train/query_loss_unadapted"), ".4f")
  speed = _fmt(metrics.get("train/tasks_per_sec"), ".0f")
  return f"loss {loss}  unadapted {unadapted}  {speed} tasks/s"


def show_bar(bar: rich_progress.Progress,
             log: logging.Logger) -> Callable[[], None]:
  """Starts `bar`; returns the function that stops it.

  While it is shown, the records of `log`'s handlers that write to the
  bar's terminal go through rich's FileProxy, which prints whole lines
  above the bar (a record written straight to the terminal would tear it).
  """
  swapped = []
  for handler in log.handlers:
    if (isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and handler.stream is bar.console.file):
      proxy = FileProxy(bar.console, handler.stream)
      swapped.append((handler, handler.setStream(proxy)))
  bar.start()

  def stop() -> None:
    bar.stop()  # it stays on screen
    for handler, stream in swapped:
      handler.setStream(stream)

  return stop


class Progress:
  """`start(total, initial)`, `advance(step, metrics)`, `close()`.

  Args:
    console: where the bar goes (default: stderr).
    bar: allow a bar (False: log lines even on a terminal, e.g. in the
      processes other than the first of a multi-process run). The bar is
      shown iff allowed and `console` is a terminal.
    log: the logger of the plain lines and the one whose records are
      routed above the bar.
  """

  def __init__(self, *, console: Console | None = None,
               bar: bool = True,
               log: logging.Logger | None = None):
    self.console = console or Console(stderr=True)
    self.log = log or logging.getLogger("metarec")
    self.plain = (not bar or not self.console.is_terminal
                  or self.console.is_dumb_terminal)
    self.total = 0
    self._first = None  # (time, step) of the first plain line
    self._bar: rich_progress.Progress | None = None
    self._task = None
    self._stop: Callable[[], None] | None = None

  @property
  def uses_bar(self) -> bool:
    return not self.plain

  def start(self, total: int, initial: int = 0) -> None:
    """Shows progress towards step `total`, starting at step `initial`."""
    self.total = int(total)
    self._first = None
    if self.plain:
      return
    self._bar = rich_progress.Progress(
        rich_progress.TextColumn("step {task.completed}/{task.total}"),
        rich_progress.BarColumn(),
        rich_progress.TextColumn("ETA"),
        rich_progress.TimeRemainingColumn(),
        rich_progress.TextColumn("{task.fields[stats]}"),
        console=self.console, transient=False)
    self._task = self._bar.add_task("train", total=self.total,
                                    completed=int(initial), stats="")
    self._stop = show_bar(self._bar, self.log)

  def advance(self, step: int, metrics: Mapping[str, float] | None = None
              ) -> None:
    """Step `step` is done; `metrics` (on log steps) are its host values."""
    if self.plain:
      if metrics is not None:
        # The time left at the pace since the first line, as the bar's
        # ETA: a run under nohup or a scheduler showed none (helper L).
        now = time.perf_counter()
        left = time_left(self._first, now, step, self.total)
        self._first = self._first or (now, step)
        self.log.info("step %d/%d  %s%s", step, self.total,
                      describe(metrics),
                      f"  about {duration(left)} left" if left else "")
      return
    fields = {} if metrics is None else {"stats": describe(metrics)}
    self._bar.update(self._task, completed=int(step), **fields)

  def close(self) -> None:
    """Stops the bar (it stays on screen) and restores the log handlers."""
    if self._stop is not None:
      self._stop()
      self._stop = self._bar = None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False


def time_left(first: tuple[float, int] | None, now: float, done: int,
              total: int) -> float | None:
  """Seconds left to `total` at the pace since `first` (time, count done
  then); None without a pace yet, or at the end."""
  if first is None or done >= total:
    return None
  pace = (done - first[1]) / max(now - first[0], 1e-9)
  return (total - done) / pace if pace > 0 else None


def duration(seconds: float) -> str:
  """`35 s`, `4 min`, `1 h 38 min`: a time left, to the unit that matters."""
  seconds = max(int(seconds + 0.5), 0)  # (round() would give 150 s "2 min")
  if seconds < 60:
    return f"{seconds} s"
  minutes = (seconds + 30) // 60
  if minutes < 60:
    return f"{minutes} min"
  return f"{minutes // 60} h {minutes % 60} min"


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
    self._first = None  # (time, users) at the end of the first chunk
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
      # Between the first chunk, whose time is mostly compiling ("about 12
      # min left" of an export done 0.1 s later), and the last, the rate
      # since the first chunk, and the time left at it, as the bar's ETA:
      # a --top_k export of a large catalogue can run for hours.
      between = self._first is not None and self.done < self.total
      since = self._first if between else (self._start, 0)
      rate = (self.done - since[1]) / max(now - since[0], 1e-9)
      left = time_left(self._first, now, self.done, self.total)
      self._first = self._first or (now, self.done)
      # Two significant digits below 10: a slow export said "0 users/s".
      self.log.info("exported %d/%d users (%s users/s%s)", self.done,
                    self.total, f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}",
                    f", about {duration(left)} left" if left else "")

  def close(self) -> None:
    if self._stop is not None:
      self._stop()
      self._stop = self._bar = None

  def __enter__(self) -> "UserProgress":
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False
