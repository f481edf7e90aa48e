"""Every config key is documented; the README's table is the generated one."""

import os
import subprocess
import sys

import ml_collections
import pytest

from metarec_jax import config_io, config_reference
from conftest import ROOT, config_path


def default_config():
  return config_io.load_config_file(config_path("default"))


def test_every_default_key_has_a_meaning_and_no_meaning_is_stale():
  assert config_reference.check(default_config()) == []


def test_readme_table_is_the_generated_one():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  section = config_reference.section(readme)
  assert section is not None, "README.md lacks the config-reference markers"
  assert section == config_reference.markdown_table(default_config()), (
      "README's config reference is stale: run"
      " `python tools/config_reference.py --write`")


def test_an_undocumented_or_removed_key_is_caught():
  config = default_config()
  config.train.new_knob = 3
  problems = config_reference.check(config)
  assert problems == ["config key train.new_knob has no meaning in"
                      " metarec_jax/config_reference.py MEANINGS"]
  with pytest.raises(KeyError):
    config_reference.markdown_table(config)
  del config.train["new_knob"]
  del config.log["every_steps"]
  assert config_reference.check(config) == [
      "MEANINGS names log.every_steps, which the default config does not"
      " have"]


def test_table_rows_show_key_default_and_meaning():
  config = ml_collections.ConfigDict(
      {"model": {"name": "melu", "hidden": (64, 64)}})
  table = config_reference.markdown_table(config).splitlines()
  assert table[0] == "| key | default | meaning |"
  assert table[2] == ("| `model.hidden` | `(64, 64)` | "
                      + config_reference.MEANINGS["model.hidden"] + " |")
  assert table[3].startswith('| `model.name` | `"melu"` |')


def test_replace_section_round_trips():
  text = ("intro\n" + config_reference.START + "\nold\n"
          + config_reference.END + "\nafter\n")
  new = config_reference.replace_section(text, "| t |")
  assert config_reference.section(new) == "| t |"
  assert new.startswith("intro\n") and new.endswith("\nafter\n")
  with pytest.raises(ValueError):
    config_reference.replace_section("no markers", "| t |")


def test_tool_prints_the_table():
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "config_reference.py")],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == config_reference.markdown_table(
      default_config())
