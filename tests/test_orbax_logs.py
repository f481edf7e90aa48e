"""The orbax log filters drop only the noise of a failure already reported."""

import gc
import logging
import warnings

import pytest

from metarec_jax.workdir import orbax_logs

OCDBT = ValueError('OUT_OF_RANGE: Error writing "params.x/0" in OCDBT database'
                   ": File too large [os_error_code='27']")


def record(message, error=None):
  exc_info = (type(error), error, None) if error is not None else None
  return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message,
                           None, exc_info)


@pytest.mark.parametrize("holder", [
    "Task exception was never retrieved",
    "_GatheringFuture exception was never retrieved",
    "Future exception was never retrieved"])
def test_an_abandoned_tensorstore_write_is_dropped(holder):
  assert not orbax_logs.abandoned_tensorstore_failures(record(holder, OCDBT))


def test_other_unretrieved_failures_and_records_still_log():
  keep = orbax_logs.abandoned_tensorstore_failures
  assert keep(record("Task exception was never retrieved",
                     ValueError("a bug of someone else's")))
  assert keep(record("Executing <Task> took 0.2 seconds"))
  assert keep(record("something about OCDBT", OCDBT))


def async_serialize_from_host():
  """Named like orbax's serializer: its inner write coroutine, dropped."""
  async def write_fragment():
    pass
  return write_fragment()


async def some_other_coroutine():
  pass


def test_an_abandoned_orbax_write_coroutine_warns_nothing_at_exit():
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    orbax_logs.quiet_aborted_io()
    async_serialize_from_host()  # dropped unawaited, as an aborted save's
    some_other_coroutine()  # any other coroutine still warns
    gc.collect()
  unawaited = [str(w.message) for w in caught
               if "never awaited" in str(w.message)]
  assert unawaited == [
      "coroutine 'some_other_coroutine' was never awaited"]


async def _read_array_index_and_device_put():
  """Named like orbax's read: a failed restore abandons its siblings."""
  raise Exception("Encountered error while reading array index")  # pylint: disable=broad-exception-raised


def test_an_abandoned_orbax_read_prints_nothing_when_finalized(monkeypatch):
  """Seen after `eval` of a config of other shapes: ~1,600 lines of
  "Exception ignored in: <coroutine ...>" after the one-line error."""
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  printed = []
  monkeypatch.setattr(sys, "unraisablehook", printed.append)
  orbax_logs.quiet_aborted_io()

  def unraisable(coroutine):
    sys.unraisablehook(types.SimpleNamespace(
        exc_type=Exception, exc_value=Exception("read failed"),
        exc_traceback=None, err_msg="Exception ignored in",
        object=coroutine))
    coroutine.close()

  unraisable(_read_array_index_and_device_put())
  assert not printed
  unraisable(some_other_coroutine())  # anything else still prints
  assert [a.object.__qualname__ for a in printed] == ["some_other_coroutine"]


def test_the_read_filter_outlives_the_command_that_installed_it(monkeypatch):
  """`eval` of a damaged checkpoint: the abandoned reads are mostly
  finalized at exit, after `interrupts.stop_on_signals` had put back the
  hook from before the command and dropped the filter with its own: about
  one run in two printed ~3,800 lines of tracebacks after the one-line
  error. Several commands in one process keep one filter."""
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from metarec_jax import interrupts  # pylint: disable=g-import-not-at-top
  printed = []
  monkeypatch.setattr(sys, "unraisablehook", printed.append)
  for _ in range(3):
    with interrupts.stop_on_signals():
      orbax_logs.quiet_aborted_io()
  hook = sys.unraisablehook
  for coroutine in (_read_array_index_and_device_put(),
                    some_other_coroutine()):
    hook(types.SimpleNamespace(
        exc_type=Exception, exc_value=Exception("read failed"),
        exc_traceback=None, err_msg="Exception ignored in",
        object=coroutine))
    coroutine.close()
  assert [a.object.__qualname__ for a in printed] == ["some_other_coroutine"]
  assert getattr(hook, "_metarec_filter", False)


def test_a_step_without_its_record_is_not_warned_about_at_each_listing():
  """A folder a killed cleanup left half-deleted printed orbax's raw
  warning 3-4 times before metarec's own line."""
  path = "/w/checkpoints/21/_CHECKPOINT_METADATA"
  assert not orbax_logs.missing_step_record(
      record(f"Metadata file does not exist: {path}"))
  assert orbax_logs.missing_step_record(
      record("Metadata file does not exist: /w/checkpoints/21/state/_METADATA"))
  assert orbax_logs.missing_step_record(record("anything else"))


def coroutine_named(qualname):
  """An unstarted coroutine whose warning names `qualname`."""
  async def body():
    pass
  body.__qualname__ = qualname
  return body()


def test_the_steps_of_a_save_into_an_unwritable_folder_warn_nothing_at_exit():
  """A checkpoint folder made unwritable mid-run: after the one-line error,
  12 lines of "coroutine ... was never awaited" for the save's steps before
  its writes, so the error was not the last line a scheduler shows."""
  names = ["_create_paths", "JsonCheckpointHandler._save_fn", "cancellable",
           "_async_serialize_shardings",
           "_serialize_arrays_batches_without_dispatcher.<locals>."
           "_serialize_without_dispatcher",
           "BasePyTreeCheckpointHandler._write_metadata_after_commits"]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    orbax_logs.quiet_aborted_io()
    for name in names + ["my_save_fn", "Other._save_fn_later"]:
      coroutine_named(name)
    gc.collect()
  unawaited = sorted(str(w.message) for w in caught
                     if "never awaited" in str(w.message))
  assert unawaited == [
      "coroutine 'Other._save_fn_later' was never awaited",
      "coroutine 'my_save_fn' was never awaited"]


def raised_in(filename, error):
  """`error` raised by code compiled as `filename`."""
  try:
    exec(compile("raise error", filename, "exec"), {"error": error})  # pylint: disable=exec-used
  except type(error) as e:
    return e


def test_an_orbax_write_that_failed_on_its_own_is_dropped_too():
  """A full disk: orbax's metadata write (a plain OSError, no tensorstore
  mark) was logged as "Future exception was never retrieved" with its
  traceback after the one-line error."""
  keep = orbax_logs.abandoned_tensorstore_failures
  message = "Future exception was never retrieved"
  full = OSError(28, "No space left on device")
  assert not keep(record(message, raised_in(
      "/site-packages/orbax/checkpoint/_src/path/async_path.py", full)))
  assert keep(record(message, raised_in("/somewhere/else.py",
                                        OSError(28, "No space left"))))


def test_a_trainer_drops_the_callbacks_that_reach_orbaxs_closed_loop(
    monkeypatch, tmp_path):
  """A full disk during a background save: before the step that reports
  it, tensorstore's completions of the sibling writes reached the event
  loop orbax had closed, and printed up to 40 "RuntimeError: Event loop
  is closed" tracebacks (unraisable, with no object) in the log. The
  filter is in place from the checkpointer's start, not after the
  failure."""
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint  # pylint: disable=g-import-not-at-top
  printed = []
  monkeypatch.setattr(sys, "unraisablehook", printed.append)
  checkpoint.Checkpointer(str(tmp_path))
  for error in (RuntimeError("Event loop is closed"),
                RuntimeError("something else")):
    sys.unraisablehook(types.SimpleNamespace(
        exc_type=RuntimeError, exc_value=error, exc_traceback=None,
        err_msg=None, object=None))
  assert [str(a.exc_value) for a in printed] == ["something else"]
