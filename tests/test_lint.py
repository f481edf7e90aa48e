"""The habits that keep the codebase easy to change: ruff's small rule set,
the import-linter layer contract (both configured in pyproject.toml) and
modules small enough to read in one sitting."""

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
  assert "Contracts: 3 kept, 0 broken." in out.stdout


def test_every_module_has_a_layer():
  """A module the layers contract does not name is not checked at all:
  its imports could point anywhere (tools/'s toolkit went unchecked)."""
  import tomllib  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
  layers = next(c["layers"] for c in contracts if c["type"] == "layers")
  named = {m.strip() for layer in layers for m in layer.split("|")}
  package = os.path.join(ROOT, "metarec_jax")
  modules = {"metarec_jax." + n.removesuffix(".py")
             for n in os.listdir(package)
             if n != "__init__.py" and (n.endswith(".py") or os.path.isfile(
                 os.path.join(package, n, "__init__.py")))}
  assert modules - named == set()


MAX_MODULE_LINES = 400  # a module past this has more than one job
# Tables that grow by a line or two with every config key: one job however
# long (at the limit, the documented way to add a key failed this test).
TABLES = {os.path.join("metarec_jax", "config_meanings.py")}


def test_no_module_is_over_the_line_limit():
  package = os.path.join(ROOT, "metarec_jax")
  long = {}
  for folder, _, files in os.walk(package):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
          lines = sum(1 for _ in f)
        if (lines > MAX_MODULE_LINES
            and os.path.relpath(path, ROOT) not in TABLES):
          long[os.path.relpath(path, ROOT)] = lines
  assert not long, f"split these modules (over {MAX_MODULE_LINES} lines): {long}"
