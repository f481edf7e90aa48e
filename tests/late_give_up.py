"""`python late_give_up.py SECONDS COMMAND ARGS...`: `metarec COMMAND ARGS`
whose one-line stop of a multi-process run (`cluster._give_up`) starts
SECONDS late.

The test stand-in for a process the machine schedules late: it is still
connected to the coordination service when process 0, which hosts it,
has already stopped.
"""

import sys
import time

from metarec_jax import cli, cluster

delay = float(sys.argv.pop(1))
give_up_now = cluster._give_up  # pylint: disable=protected-access


def give_up_late(*args, **kwargs):
  time.sleep(delay)
  give_up_now(*args, **kwargs)


cluster._give_up = give_up_late  # pylint: disable=protected-access
cli.entry()
