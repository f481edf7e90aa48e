"""`python patched.py PATCH=VALUE[,PATCH=VALUE...] COMMAND ARGS...`:
`metarec COMMAND ARGS` with each named test patch applied first: the
module `PATCH` of this folder (`late_compile`, `late_give_up`,
`bug_in_process`, `other_factors`, `shared_wait`), whose `apply(VALUE)`
replaces one function or constant of the product with its stand-in for a
machine or host that behaves otherwise (`procs.start` builds the line)."""

import importlib
import sys

from metarec_jax import cli

for spec in sys.argv.pop(1).split(","):
  name, _, value = spec.partition("=")
  importlib.import_module(name).apply(value)
cli.entry()
