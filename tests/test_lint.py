"""The habits that keep the codebase easy to change: ruff's small rule set
and the import-linter layer contract (both configured in pyproject.toml)."""

import os
import shutil
import subprocess
import sys

from conftest import ROOT


def tool(name: str) -> str:
  """The console script installed beside this Python (the test extra's)."""
  path = os.path.join(os.path.dirname(sys.executable), name)
  return path if os.path.exists(path) else shutil.which(name) or name


def run(*args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run(args, capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=300)


def test_ruff_finds_nothing():
  out = run(tool("ruff"), "check", "--no-cache", "--output-format=concise",
            ".")
  assert out.returncode == 0, out.stdout + out.stderr


def test_imports_keep_the_layer_order():
  out = run(tool("lint-imports"), "--no-cache")
  assert out.returncode == 0, out.stdout + out.stderr
  assert "Contracts: 2 kept, 0 broken." in out.stdout
