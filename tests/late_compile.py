"""Test patch (`patched.py late_compile=SECONDS`): the first compilation
starts SECONDS late.

The test stand-in for a process whose persistent compilation cache is empty
while the others load theirs: it reaches the programs' first collective
minutes after them. Sleeping costs no CPU, where compiling configs/default.py
for real cost the suite two CPU-minutes per run.
"""

import time

from metarec_jax import runtime


def apply(value: str) -> None:
  delay = float(value)
  compile_now = runtime.CompiledByShape.compile
  late = [True]

  def compile_late(self, *args):
    if late:
      late.clear()
      time.sleep(delay)
    return compile_now(self, *args)

  runtime.CompiledByShape.compile = compile_late
