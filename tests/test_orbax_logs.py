"""The orbax log filters drop only the noise of a failure already reported."""

import logging

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
