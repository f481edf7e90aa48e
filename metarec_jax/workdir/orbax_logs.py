"""What of orbax's logging metarec keeps quiet, and why.

Each function is a `logging` filter (or installs one) for a record that
would mislead: a notice about something metarec does on purpose, or the
noise of a failure that `checkpoint.Checkpointer` already reports in one
line. Everything else orbax logs still reaches its logger.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# The warning of an orbax coroutine an aborted save never started: its
# writes, and (a checkpoint folder that cannot be written) the steps
# before them: path creation, metadata, the JSON item, serialization.
ABANDONED_WRITE = (
    r"coroutine '(async_serialize\w*\.<locals>\.\w+|(\w+\.)?(_create_paths"
    r"|cancellable|_save_fn|_async_serialize_shardings|_write_metadata_after"
    r"_commits)|_serialize_arrays_batches\w*\.<locals>\.\w+)' was never"
    r" awaited")
# The read coroutines a failed restore leaves: their failures surface as
# "Exception ignored in: <coroutine ...>" tracebacks when finalized.
ABANDONED_READS = ("_read_array_index_and_device_put",)


def quiet_aborted_io() -> None:
  """Drops the noise of an aborted orbax read or write.

  When a restore fails half-way (a truncated file) or a save fails (a full
  disk), orbax abandons the sibling reads or writes: their failures surface
  later, whenever the garbage collector reaches them, as asyncio's "Task
  exception was never retrieved" or "_GatheringFuture exception was never
  retrieved" log records and, for tensorstore callbacks that arrive after
  orbax closed its event loop, as "Event loop is closed" tracebacks through
  `sys.unraisablehook`, and for the write coroutines of an abandoned
  save that were never started, as a "coroutine
  'async_serialize_from_host.<locals>.write_fragment' was never awaited"
  RuntimeWarning printed at exit, after the run's one-line error. The real
  error has been reported already (a fallback warning or the one line that
  stops the run); everything else still reaches the previous hook, the
  asyncio logger and the warnings filters.
  """
  # Idempotent: an identical filter replaces the earlier one.
  warnings.filterwarnings("ignore", category=RuntimeWarning,
                          message=ABANDONED_WRITE)
  sys.unraisablehook = _filter_over(sys.unraisablehook)
  logging.getLogger("asyncio").addFilter(abandoned_tensorstore_failures)


def quiet_failed_saves() -> None:
  """Drops what a failed save prints before `Checkpointer` reports it in
  one line: orbax's own ERROR reports (`save_failure_report`) and the
  tracebacks of tensorstore callbacks that reach an event loop orbax
  already closed.

  When a background save fails (a full disk), orbax closes its event loop
  while tensorstore still completes the sibling writes; each completion
  calls `loop.call_soon_threadsafe` from tensorstore's own thread, which
  raises "Event loop is closed", and tensorstore reports it as unraisable
  with no object (`sys.unraisablehook`, `_filter_over`): dozens of bare
  tracebacks in the middle of the log, before the step that notices the
  failure reports it in one line."""
  logging.getLogger("absl").addFilter(save_failure_report)
  sys.unraisablehook = _filter_over(sys.unraisablehook)


def _filter_over(previous):
  """The `sys.unraisablehook` of `quiet_aborted_io` over `previous` (which
  itself, where it is one). Its `_metarec_rewrap` lets
  `interrupts.stop_on_signals` keep it over the hook from before the
  command: the abandoned reads are mostly finalized at exit, after the
  command has returned."""
  if getattr(previous, "_metarec_filter", False):
    return previous

  def hook(args):
    if (isinstance(args.exc_value, RuntimeError)
        and "Event loop is closed" in str(args.exc_value)):
      return
    if getattr(args.object, "__qualname__", "") in ABANDONED_READS:
      return  # a read of a failed restore, finalized at exit
    previous(args)

  hook._metarec_filter = True  # pylint: disable=protected-access
  hook._metarec_rewrap = _filter_over  # pylint: disable=protected-access
  return hook


def abandoned_tensorstore_failures(record: logging.LogRecord) -> bool:
  """False for an unretrieved failure of a tensorstore or orbax read or
  write (see above), whichever asyncio object (task, gathering future,
  future) held it."""
  if "exception was never retrieved" not in record.getMessage():
    return True
  error = record.exc_info[1] if record.exc_info else None
  text = str(error) if error is not None else record.getMessage()
  if any(mark in text for mark in ("OCDBT", "zarr", "tensorstore")):
    return False
  # orbax's own writes (its metadata files) fail with a plain OSError.
  tb = getattr(error, "__traceback__", None)
  while tb is not None:
    if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
      return False
    tb = tb.tb_next
  return True


def save_failure_report(record: logging.LogRecord) -> bool:
  """False for orbax's own ERROR reports of a failed save (several
  tracebacks from its background threads): the failure reaches
  `Checkpointer._writing`, which reports it in one line."""
  return not (record.levelno >= logging.ERROR
              and f"{os.sep}orbax{os.sep}" in record.pathname
              and ("raised an exception" in record.getMessage()
                   or "failed" in record.getMessage().lower()))


def read_only_notice(record: logging.LogRecord) -> bool:
  """False for orbax's "Given directory is read only" warning: `metarec
  eval` and `export` open the checkpoints read-only on purpose, and a
  warning on every run would suggest something went wrong."""
  return not record.getMessage().startswith("Given directory is read only")


def no_metrics_notice(record: logging.LogRecord) -> bool:
  """False for orbax's warning about a save without metrics: only the
  validated steps carry a validation MAE."""
  return "did not provide metrics" not in record.getMessage()


def missing_step_record(record: logging.LogRecord) -> bool:
  """False for orbax's warning that a step has no `_CHECKPOINT_METADATA`
  (repeated at every listing): such a step reads (orbax takes the
  folder's time), and a folder a killed cleanup left half-deleted is
  removed or reported by the restore that meets it."""
  return not (record.getMessage().startswith("Metadata file does not exist")
              and record.getMessage().endswith("_CHECKPOINT_METADATA"))


def handler_override_notice(record: logging.LogRecord) -> bool:
  """False for orbax's warning that a type handler is replaced:
  `checkpoint` replaces the array handler on purpose, with other options."""
  return not (record.getMessage().startswith("Type handler registry type")
              and "overriding" in record.getMessage())
