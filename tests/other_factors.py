"""`python other_factors.py PROCESS_ID COMMAND ARGS...`: `metarec COMMAND
ARGS` in which process PROCESS_ID of a joined run computes other item
factors (`data.factors.item_factors`, each row moved by 1).

The test stand-in for a host whose SVD library rounds otherwise: the run
must still start every process from process 0's rows."""

import sys

import jax

from metarec_jax import cli
from metarec_jax.data import factors

other = int(sys.argv.pop(1))
item_factors = factors.item_factors


def other_item_factors(*args, **kwargs):
  rows = item_factors(*args, **kwargs)
  if rows is not None and jax.process_index() == other:
    rows = rows + 1.0
  return rows


factors.item_factors = other_item_factors
cli.entry()
