"""What a `metarec` process imports before its first step.

Every command pays its imports at start-up, and the test suite starts
hundreds of `metarec` processes. Libraries that only some runs need are
imported where they are used.
"""

import json
import subprocess
import sys

from conftest import ROOT

# Imported where used: scipy by `model.id_init=svd`'s factoring
# (data/factors.py: about 0.24 s of start-up), matplotlib by `metarec plot`,
# FastAPI and uvicorn by `metarec serve`, TensorFlow never (TensorBoard's
# writer works without it).
LAZY = ("scipy", "matplotlib", "fastapi", "uvicorn", "tensorflow")


def test_the_trainer_imports_no_library_that_only_some_runs_need():
  code = ("import json, sys\n"
          "import metarec_jax.cli, metarec_jax.experiment,"
          " metarec_jax.train.loop\n"
          "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, timeout=300, check=True)
  imported = set(json.loads(out.stdout.strip().splitlines()[-1]))
  assert "jax" in imported and "orbax" in imported  # it did import them
  assert not imported & set(LAZY), sorted(imported & set(LAZY))
