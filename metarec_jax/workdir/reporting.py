"""Where a run's metrics go: `metrics.jsonl` and TensorBoard event files.

Only process 0 writes (`active=False` elsewhere). TensorBoard files are
written with the `tensorboard` package alone (no TensorFlow): its
`EventFileWriter` and summary protos. `tensorboard.summary.Writer` only
knows scalars, so the histogram and HParams summaries are built here from
the plugins' own protos and metadata helpers (the ones that need no
TensorFlow), in the same tensor format TensorBoard's own writers produce.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from typing import Any, Mapping, Sequence

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

from metarec_jax import atomic, config_io, errors

HISTOGRAM_BINS = 30  # TensorBoard's own default
log = logging.getLogger("metarec")


def _json_value(v):
  v = float(v)
  return v if math.isfinite(v) else None


def scalar_summary(tag: str, value: float) -> summary_pb2.Summary.Value:
  """A scalar in the tensor format of `tensorboard.summary.Writer`."""
  meta = scalar_metadata.create_summary_metadata(display_name=None,
                                                 description=None)
  meta.data_class = summary_pb2.DATA_CLASS_SCALAR
  return summary_pb2.Summary.Value(
      tag=tag, metadata=meta,
      tensor=tensor_util.make_tensor_proto(np.float32(value)))


def histogram_buckets(values: np.ndarray,
                      bins: int = HISTOGRAM_BINS) -> np.ndarray:
  """`[bins, 3]` rows `(left edge, right edge, count)` of the finite values.

  The layout of TensorBoard's histogram plugin; like its writers, constant
  data is one spike (every edge at the value, the count in the last bucket)
  rather than a unit-wide spread, so a constant learned rate reads as one.
  """
  data = np.asarray(values, np.float64).ravel()
  data = data[np.isfinite(data)]
  if data.size == 0:
    return np.zeros((bins, 3))
  lo, hi = float(data.min()), float(data.max())
  if lo == hi:
    counts = np.zeros(bins)
    counts[-1] = data.size
    return np.stack([np.full(bins, lo), np.full(bins, lo), counts], axis=1)
  counts, edges = np.histogram(data, bins=bins, range=(lo, hi))
  return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


def histogram_summary(tag: str, values: np.ndarray,
                      bins: int = HISTOGRAM_BINS) -> summary_pb2.Summary.Value:
  """A histogram summary in the histogram plugin's tensor format."""
  meta = histogram_metadata.create_summary_metadata(display_name=None,
                                                    description=None)
  meta.data_class = summary_pb2.DATA_CLASS_TENSOR
  return summary_pb2.Summary.Value(
      tag=tag, metadata=meta,
      tensor=tensor_util.make_tensor_proto(histogram_buckets(values, bins),
                                           dtype=np.float64))


def hparam_value(value: Any) -> bool | float | str:
  """A config value as an HParams value: bool, number or string.

  Tuples and lists (and anything else) become their Python text, so
  `data.buckets` reads `(8, 16, 32)` in the HParams table.
  """
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  if isinstance(value, str):
    return value
  if isinstance(value, list):
    value = tuple(value)
  return str(value)


def flat_hparams(config: Mapping[str, Any]) -> dict:
  """A nested config (ConfigDict or dict) as `{dotted key: hparam value}`."""
  return {k: hparam_value(v) for k, v in config_io.flat(config).items()}


def _hparams_value(tag: str, data: plugin_data_pb2.HParamsPluginData
                   ) -> summary_pb2.Summary.Value:
  meta = hparams_metadata.create_summary_metadata(data)
  meta.data_class = summary_pb2.DATA_CLASS_TENSOR
  return summary_pb2.Summary.Value(tag=tag, metadata=meta,
                                   tensor=hparams_metadata.NULL_TENSOR)


def hparams_summaries(hparams: Mapping[str, bool | float | str],
                      metric_tags: Sequence[str], *,
                      descriptions: Mapping[str, str] | None = None,
                      start_time: float | None = None
                      ) -> list[summary_pb2.Summary.Value]:
  """The HParams plugin's experiment and session-start summaries of one run.

  Args:
    hparams: flat `{name: bool | float | str}` (see `flat_hparams`).
    metric_tags: scalar tags the HParams table shows as metric columns.
    descriptions: optional `{name: text}` shown as the hparams' tooltips.
    start_time: the session's start (seconds since the epoch).

  The session's group name is a hash of the values (as TensorBoard's own
  `hparams_pb` does), so runs with equal hyperparameters group together.
  """
  descriptions = descriptions or {}
  types = {bool: api_pb2.DATA_TYPE_BOOL, float: api_pb2.DATA_TYPE_FLOAT64,
           str: api_pb2.DATA_TYPE_STRING}
  experiment = api_pb2.Experiment(
      hparam_infos=[api_pb2.HParamInfo(
          name=name, type=types[type(value)],
          description=descriptions.get(name, ""))
                    for name, value in sorted(hparams.items())],
      metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag))
                    for tag in metric_tags],
      time_created_secs=start_time)
  group = json.dumps(dict(sorted(hparams.items())), separators=(",", ":"))
  session = plugin_data_pb2.SessionStartInfo(
      group_name=hashlib.sha256(group.encode()).hexdigest(),
      start_time_secs=start_time)
  for name, value in sorted(hparams.items()):
    if isinstance(value, bool):
      session.hparams[name].bool_value = value
    elif isinstance(value, float):
      session.hparams[name].number_value = value
    else:
      session.hparams[name].string_value = value
  return [
      _hparams_value(hparams_metadata.EXPERIMENT_TAG,
                     plugin_data_pb2.HParamsPluginData(experiment=experiment)),
      _hparams_value(hparams_metadata.SESSION_START_INFO_TAG,
                     plugin_data_pb2.HParamsPluginData(
                         session_start_info=session)),
  ]


def _quiet_writer_thread_failures() -> None:
  """Keeps a failed write of TensorBoard's writer thread (a full disk) from
  printing a traceback: the writer raises the same error at the next
  `flush`, which `Reporter` reports in one line naming the file."""
  previous = threading.excepthook
  if getattr(previous, "_metarec_filter", False):
    return

  def hook(args):
    writer = type(args.thread).__module__ == EventFileWriter.__module__
    if not (writer and issubclass(args.exc_type, OSError)):
      previous(args)

  hook._metarec_filter = True  # pylint: disable=protected-access
  threading.excepthook = hook


def _row_at_or_before(raw: bytes, step: int) -> bool | None:
  """Whether a `metrics.jsonl` line is a whole row of a step <= `step`;
  None where it is no row at all (cut short, or damaged)."""
  try:  # a line that is not UTF-8 (a damaged file) is a bad row too
    line = raw.decode("utf-8")
    return line.endswith("\n") and int(json.loads(line)["step"]) <= step
  except (ValueError, KeyError, TypeError, OverflowError):
    return None  # OverflowError: a step of Infinity or 1e999


class Reporter:
  """Appends one JSON object per log step and writes TensorBoard events.

  `scalars` go to both `metrics.jsonl` and TensorBoard; `histograms` and
  `hparams` only to TensorBoard (they are not scalars).
  """

  def __init__(self, workdir: str, *, active: bool = True, run: str = "",
               jsonl: bool = True):
    """Args:
      workdir: the run's work directory.
      active: False writes nothing (every process but the first).
      run: a TensorBoard run below `WORKDIR/tensorboard` ("" = the training
        run itself; `metarec eval` writes to "eval").
      jsonl: also append the scalars to `WORKDIR/metrics.jsonl`.
    """
    self.active = active
    self.path = os.path.join(workdir, "metrics.jsonl") if jsonl else None
    # Before the writer: its thread may fail at once (a read-only copy of
    # a run), and the traceback was printed before the hook was in place.
    _quiet_writer_thread_failures()
    self._events = (EventFileWriter(os.path.join(workdir, "tensorboard", run))
                    if active else None)

  def _write(self, step: int, values: list[summary_pb2.Summary.Value]
             ) -> None:
    with errors.writing(self._events_path()):
      if values:
        event = event_pb2.Event(wall_time=time.time(), step=int(step),
                                summary=summary_pb2.Summary(value=values))
        self._events.add_event(event)
      self._events.flush()

  def _events_path(self) -> str:
    # pylint: disable-next=protected-access
    return os.fsdecode(getattr(self._events, "_file_name",
                               self._events.get_logdir()))  # (bytes)

  def scalars(self, step: int, metrics: Mapping[str, float]) -> None:
    """Writes the scalar metrics of `step` (non-finite: null / skipped)."""
    if not self.active:
      return
    flat = {k: _json_value(v) for k, v in metrics.items()
            if v is not None and np.ndim(v) == 0}
    if self.path:
      with errors.writing(self.path), open(self.path, "a") as f:
        f.write(json.dumps({"step": int(step), **flat}) + "\n")
    self._write(step, [scalar_summary(tag, value)
                       for tag, value in flat.items() if value is not None])

  def drop_rows_after(self, step: int) -> int:
    """Drops the `metrics.jsonl` rows of steps past `step` (and a line cut
    short by a kill), rewriting the file atomically, and has TensorBoard
    drop its events past `step` (a `SessionLog.START` at `step + 1`, which
    TensorBoard's readers take as "purge every earlier event from this step
    on"); returns how many rows were dropped.

    A resume calls it with the step it restored: the rows a killed run
    logged after its last checkpoint are logged again as the steps are
    run again, and would otherwise appear twice (in TensorBoard, as a curve
    that runs back in steps); a fresh start, with no checkpoint, calls it
    with -1 (every row goes: step 0's validation is logged again).
    """
    if not self.active:
      return 0
    with errors.writing(self._events_path()):
      self._events.add_event(event_pb2.Event(
          wall_time=time.time(), step=int(step) + 1,
          session_log=event_pb2.SessionLog(
              status=event_pb2.SessionLog.START)))
      self._events.flush()
    if not self.path or not os.path.exists(self.path):
      return 0
    keep, dropped, garbage = [], 0, []
    with open(self.path, "rb") as f:
      for number, raw in enumerate(f, 1):
        ok = _row_at_or_before(raw, step)
        if ok is None and raw.endswith(b"\n"):  # not a line a kill cut short
          garbage.append(number)
        if ok:
          keep.append(raw.decode("utf-8"))
        else:
          dropped += 1
    if garbage:  # damage, unlike the rows past `step`: the user is told
      log.warning("%s: dropped %d line(s) that are not a JSON object with a"
                  " step: line %s", self.path, len(garbage), ", ".join(
                      map(str, garbage[:10])) + (
                          ", ..." if len(garbage) > 10 else ""))
    if dropped:
      atomic.write_text(self.path, "".join(keep))
    return dropped

  @classmethod
  def drop_rows_of_a_killed_run(cls, workdir: str, step: int, *,
                                active: bool = True) -> None:
    """`drop_rows_after(step)` where `metrics.jsonl` holds a row past
    `step` (a run killed after its last checkpoint, resumed with nothing
    to train); otherwise nothing is written."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not active or not os.path.exists(path):
      return
    with open(path, "rb") as f:
      if all(_row_at_or_before(raw, step) for raw in f):
        return
    reporter = cls(workdir)
    try:
      reporter.drop_rows_after(step)
    finally:
      reporter.close()

  def histograms(self, step: int, arrays: Mapping[str, np.ndarray], *,
                 bins: int = HISTOGRAM_BINS) -> None:
    """Writes one histogram per `{tag: array}` (finite values only)."""
    if not self.active:
      return
    self._write(step, [histogram_summary(tag, np.asarray(a), bins)
                       for tag, a in arrays.items()])

  def hparams(self, hparams: Mapping[str, Any], metric_tags: Sequence[str],
              *, descriptions: Mapping[str, str] | None = None) -> None:
    """Records the run's hyperparameters for TensorBoard's HParams tab.

    Args:
      hparams: flat `{dotted key: value}`; values that are not bool, number
        or string are written as their text (see `flat_hparams`).
      metric_tags: scalar tags shown as the table's metric columns.
      descriptions: optional `{dotted key: meaning}`.
    """
    if not self.active:
      return
    values = {k: hparam_value(v) for k, v in hparams.items()}
    self._write(0, hparams_summaries(values, metric_tags,
                                     descriptions=descriptions,
                                     start_time=time.time()))

  def close(self) -> None:
    if self._events is not None:
      events, self._events = self._events, None
      with errors.writing(events.get_logdir()):
        events.close()
