"""Opening orbax's `CheckpointManager` on a work directory that may be
damaged or changing.

The manager reads every step's saved metrics (`STEP/metrics/metrics`, the
validation MAE) when it starts. Two things ended a command in a traceback
there: a damaged metrics file of any step (a JSON error, a value that is
no number), and a reader (`eval`, `export`) starting while a trainer
removed an old step (`checkpoint.keep`) between orbax's listing and its
read. The first is named in one line; the second is opened again.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from metarec_jax.errors import InputError

METRICS_FILE = ("metrics", "metrics")  # orbax's item folder and file name
ATTEMPTS = 5  # openings while steps vanish under the listing


def check_metrics(directory: str, metric: str) -> None:
  """Raises InputError naming the first step's metrics file that is not a
  JSON object whose `metric` is a number (or absent, or null); a step
  folder without metrics, or removed meanwhile, is fine."""
  if not os.path.isdir(directory):
    return
  for entry in sorted(os.listdir(directory)):
    if not entry.isdigit():
      continue
    path = os.path.join(directory, entry, *METRICS_FILE)
    try:
      with open(path, "rb") as f:
        raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
      continue
    try:
      metrics = json.loads(raw)
      ok = isinstance(metrics, dict) and (
          metrics.get(metric) is None
          or type(metrics[metric]) in (int, float))
    except ValueError:  # JSON, or not UTF-8
      ok = False
    if not ok:
      raise InputError(
          f"damaged: not the metrics of a checkpoint (a JSON object with a"
          f" number `{metric}`); move the step's folder {entry} aside to"
          " use the others", path=path)


def open_manager(directory: str, metric: str, make: Callable[[], Any]):
  """`make()` (the manager's constructor) once `check_metrics` passes,
  again where a step folder vanished while it read them."""
  check_metrics(directory, metric)
  for _ in range(ATTEMPTS - 1):
    try:
      return make()
    except FileNotFoundError as e:
      if not str(e.filename or "").startswith(directory):
        raise
  return make()
