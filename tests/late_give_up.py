"""Test patch (`patched.py late_give_up=SECONDS`): the one-line stop of a
multi-process run (`cluster._give_up`) starts SECONDS late.

The test stand-in for a process the machine schedules late: it is still
connected to the coordination service when process 0, which hosts it,
has already stopped.
"""

import time

from metarec_jax import cluster


def apply(value: str) -> None:
  delay = float(value)
  give_up_now = cluster._give_up  # pylint: disable=protected-access

  def give_up_late(*args, **kwargs):
    time.sleep(delay)
    give_up_now(*args, **kwargs)

  cluster._give_up = give_up_late  # pylint: disable=protected-access
