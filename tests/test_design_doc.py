"""docs/design.md's command-line contract names the flags the commands take."""

import os
import re

from absl import flags
import numpy as np

from conftest import ROOT
from metarec_jax import cli_spec
from metarec_jax.eval import metrics


def synopsis() -> dict[str, set[str]]:
  """{command: flags named on its lines} of design.md's "Command line"."""
  with open(os.path.join(ROOT, "docs", "design.md")) as f:
    text = f.read()
  section = text.split("## Command line", 1)[1]
  block = re.search(r"```\n(.*?)\n```", section, re.S).group(1)
  named: dict[str, set[str]] = {}
  command = None
  for line in block.splitlines():
    words = line.split()
    if words[:1] == ["metarec"]:
      command = words[1]
    named.setdefault(command, set()).update(
        re.findall(r"--([A-Za-z_][\w-]*)", line))
  return named


def named_flags(name: str, fv: flags.FlagValues) -> set[str]:
  """The flags of `metarec NAME` its synopsis names (`--noX`: boolean X)."""
  named = set()
  for f in synopsis()[name]:
    if (f.startswith("no") and f[2:] in fv
        and isinstance(fv[f[2:]], flags.BooleanFlag)):
      f = f[2:]
    named.add(f)
  return named


def defined(name: str) -> flags.FlagValues:
  fv = flags.FlagValues()
  cli_spec.COMMANDS[name].define(fv)
  return fv


def test_every_command_is_in_the_synopsis():
  assert set(synopsis()) == set(cli_spec.COMMANDS)


def test_every_documented_flag_exists():
  for name in synopsis():
    fv = defined(name)
    named = named_flags(name, fv)
    takes_config = cli_spec.COMMANDS[name].takes_config
    unknown = {f for f in named
               if f not in fv and not (takes_config and f == "config")}
    assert not unknown, f"metarec {name}: design.md names {sorted(unknown)}"


def test_every_flag_is_documented():
  for name in synopsis():
    fv = defined(name)
    named = named_flags(name, fv)
    # serve's --token-file is its --token_file's alias: either names it.
    covered = {f.replace("-", "_") for f in named}
    missing = {f for f in fv if f.replace("-", "_") not in covered}
    assert not missing, f"metarec {name}: design.md omits {sorted(missing)}"


def test_the_eval_json_names_every_metric_of_a_scenario_and_its_baselines():
  """A baseline reports every rating metric of its scenario (design.md
  showed only `mae`), and an implicit scenario adds `ranking`."""
  with open(os.path.join(ROOT, "docs", "design.md")) as f:
    text = f.read()
  listed = text.split("- `eval`: `", 1)[1].split("- `bench`:", 1)[0]
  baseline = listed.split('"global_mean": {', 1)[1].split("}", 1)[0]
  empty = np.zeros((0, 1))
  keys = set(metrics.summary(empty, empty, empty.astype(bool)))
  assert set(re.findall(r'"([\w@]+)":', baseline)) == keys
  assert '"ranking":' in listed
