"""The README's commands and example stay true."""

import os
import re

import numpy as np

from conftest import ROOT


def readme():
  with open(os.path.join(ROOT, "README.md")) as f:
    return f.read()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
  blocks = re.findall(r"```bash\n(.*?)\n```", readme(), re.S)
  train, test = blocks[0].strip(), blocks[1].strip()
  assert "metarec train --config=configs/default.py" in train
  assert "pip install" in train and "pip install" in test
  assert "pytest" in test
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = [l for l in f.read().splitlines() if l and not l.startswith("#")]
  assert ci[-1] == test


def test_the_python_example_runs():
  code = re.findall(r"```python\n(.*?)\n```", readme(), re.S)[0]
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)  # pylint: disable=exec-used
  assert np.isfinite(float(scope["loss"]))
  assert scope["grads"]["w1"].shape == (4, 8)
  assert float(np.abs(scope["grads"]["w1"]).sum()) > 0


def test_the_main_install_command_brings_what_every_subcommand_needs():
  """`pip install -e .` (the README's first command, no extras) installs
  matplotlib, so `metarec plot` works after it."""
  import configparser  # pylint: disable=g-import-not-at-top
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  needs = [re.split(r"[<>=!\[ ]", line.strip())[0]
           for line in cfg["options"]["install_requires"].splitlines()
           if line.strip()]
  assert "matplotlib" in needs
  assert "pip install -q -e . " in readme().split("```")[1]
