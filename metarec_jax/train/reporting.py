"""Where a run's metrics go: `metrics.jsonl` and TensorBoard event files.

Only process 0 writes (`active=False` elsewhere). TensorBoard files are
written with the `tensorboard` package alone (no TensorFlow).
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import numpy as np
from tensorboard.summary import Writer


def _json_value(v):
  v = float(v)
  return v if math.isfinite(v) else None


class Reporter:
  """Appends one JSON object per log step and the same scalars to TensorBoard."""

  def __init__(self, workdir: str, *, active: bool = True):
    self.active = active
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = Writer(os.path.join(workdir, "tensorboard")) if active else None

  def scalars(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.active:
      return
    flat = {k: _json_value(v) for k, v in metrics.items()
            if np.ndim(v) == 0 and v is not None}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **flat}) + "\n")
    for tag, value in flat.items():
      if value is not None:
        self._tb.add_scalar(tag, value, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
