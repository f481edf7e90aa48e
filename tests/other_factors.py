"""Test patch (`patched.py other_factors=PROCESS_ID[:none|:late]`): process
PROCESS_ID of a joined run computes other item factors
(`data.factors.item_factors`, each row moved by 1), with `:none` none (as
where its SVD did not converge), with `:late` the same ones 35 s late (a
slower host's SVD).

The test stand-in for a host whose SVD library rounds otherwise or runs
slower: the run must still start every process from process 0's rows."""

import time

import jax

from metarec_jax.data import factors


def apply(value: str) -> None:
  other, _, kind = value.partition(":")
  item_factors = factors.item_factors

  def other_item_factors(*args, **kwargs):
    rows = item_factors(*args, **kwargs)
    if rows is not None and jax.process_index() == int(other):
      if kind == "late":
        time.sleep(35)  # past the 30 s a gloo collective waits
      else:
        rows = None if kind == "none" else rows + 1.0
    return rows

  factors.item_factors = other_item_factors
