"""Test patch (`patched.py shared_wait=SECONDS`): a process of a joined run
looks for process 0's record in the work directory's lock for SECONDS
(`workdir.lock.SHARED_WAIT_S`, 30 s) before it stops.

Where a test's process cannot see process 0's work directory, the product's
wait would be 30 s of the suite's time spent sleeping."""

from metarec_jax.workdir import lock


def apply(value: str) -> None:
  lock.SHARED_WAIT_S = float(value)
