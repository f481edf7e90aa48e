"""The README's "Config reference" table, generated from the config modules.

The table lies between the `config-reference` marker comments and is
written by `tools/config_reference.py` from `config_meanings.MEANINGS`,
`config_reference.ALLOWED` and the defaults (`config_defaults`); a test fails when a
key of the default config has no meaning or rule, when a meaning or a rule
names a key that no longer exists, or when the README's table differs from
the generated one.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from metarec_jax import config_io
from metarec_jax.config_meanings import MEANINGS
from metarec_jax.config_reference import ALLOWED

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def format_default(value: Any) -> str:
  """A default as Python text: `"melu"`, `(8, 16)`, `()`, `0.002`."""
  if isinstance(value, list):
    value = tuple(value)
  if isinstance(value, str):
    return '"' + value + '"'
  return repr(value)


def check(config: ml_collections.ConfigDict) -> list[str]:
  """Problems: keys without a meaning and meanings of unknown keys."""
  keys = list(config_io.flat(config))
  problems = [f"config key {k} has no meaning in"
              " metarec_jax/config_meanings.py MEANINGS"
              for k in keys if not MEANINGS.get(k, "").strip()]
  problems += [f"MEANINGS names {k}, which the default config does not have"
               for k in MEANINGS if k not in keys]
  problems += [f"config key {k} has no rule in"
               " metarec_jax/config_reference.py ALLOWED"
               for k in keys if k not in ALLOWED]
  problems += [f"ALLOWED names {k}, which the default config does not have"
               for k in ALLOWED if k not in keys]
  return problems


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(config: ml_collections.ConfigDict) -> str:
  """The markdown table `| key | default | allowed | meaning |` of every
  leaf key.

  Raises:
    KeyError: a key has no meaning or no rule (see `check`).
  """
  lines = ["| key | default | allowed | meaning |",
           "| --- | --- | --- | --- |"]
  for key, value in config_io.flat(config).items():
    if key not in MEANINGS:
      raise KeyError(f"config key {key} has no meaning in MEANINGS")
    if key not in ALLOWED:
      raise KeyError(f"config key {key} has no rule in ALLOWED")
    lines.append(f"| `{key}` | `{_cell(format_default(value))}` |"
                 f" {_cell(ALLOWED[key].text)} | {_cell(MEANINGS[key])} |")
  return "\n".join(lines)


def section(text: str) -> str | None:
  """What lies between the README's markers (stripped), or None."""
  start, end = text.find(START), text.find(END)
  if start < 0 or end < start:
    return None
  return text[start + len(START):end].strip()


def replace_section(text: str, table: str) -> str:
  """`text` with the part between the markers replaced by `table`.

  Raises:
    ValueError: the markers are missing or out of order.
  """
  start, end = text.find(START), text.find(END)
  if start < 0 or end < start:
    raise ValueError(f"no {START} ... {END} section")
  return text[:start + len(START)] + "\n" + table + "\n" + text[end:]
