"""Test patch (`patched.py bug_in_process=PROCESS_ID`): process PROCESS_ID
of a joined run meets a bug (an exception no one-line error names) as it
builds its experiment.

The test stand-in for a bug that shows on one host only (its data, its
library versions)."""

import jax

from metarec_jax import experiment


def apply(value: str) -> None:
  failing = int(value)
  build = experiment.build

  def build_or_fail(*args, **kwargs):
    if jax.process_index() == failing:
      raise ZeroDivisionError("an injected bug")
    return build(*args, **kwargs)

  experiment.build = build_or_fail
