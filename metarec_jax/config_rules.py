"""What a config value may be: the rule types of `config_reference.ALLOWED`.

Each rule checks one value (`problem(value)` is None or a short sentence)
and describes itself for the README's config reference (`text`). The rules
of every key live in `config_reference.ALLOWED`;
`config_reference.validate` applies them before a command builds or creates
anything.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
from typing import Any

from metarec_jax.errors import excerpt


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer in `[lo, hi]` (`hi=None`: up to `INT_MAX`)."""

  lo: int
  hi: int | None = None

  @property
  def text(self) -> str:
    if self.hi is not None:
      return f"integer {self.lo} to {self.hi}"
    return f"integer >= {self.lo}"

  def problem(self, value: Any) -> str | None:
    if not _is_int(value) or value < self.lo or (
        self.hi is not None and value > self.hi):
      return f"must be an {self.text}"
    if self.hi is None and value > INT_MAX:
      return f"must be an {self.text} and at most {INT_MAX:,}"
    return None


# What an unbounded integer key may hold: JAX's PRNG keys, the schedule's
# step counter and the samplers take 32-bit integers (a seed of 2**63 and
# 3e9 steps passed the checks and ended the run in an OverflowError).
INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Float:
  """A finite number above (or at) `lo` and below (or at) `hi`."""

  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False  # True: the number must exceed lo
  hi_open: bool = False  # True: the number must stay below hi

  @property
  def text(self) -> str:
    parts = []
    if self.lo is not None:
      parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
    if self.hi is not None:
      parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
    return "number " + " and ".join(parts) if parts else "finite number"

  def problem(self, value: Any) -> str | None:
    ok = _is_number(value)
    if ok and self.lo is not None:
      ok = value > self.lo if self.lo_open else value >= self.lo
    if ok and self.hi is not None:
      ok = value < self.hi if self.hi_open else value <= self.hi
    return None if ok else f"must be a {self.text}"


@dataclasses.dataclass(frozen=True)
class Bool:
  """true or false."""

  @property
  def text(self) -> str:
    return "true or false"

  def problem(self, value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


@dataclasses.dataclass(frozen=True)
class Text:
  """A string (`nonempty`: not blank); `column`: a 0-based position as an
  integer is accepted too (a column of a file without a header)."""

  nonempty: bool = False
  column: bool = False
  separator: bool = False  # spaces and tabs are text (a field separator)

  @property
  def text(self) -> str:
    what = "non-empty text" if self.nonempty else "text"
    return what + (" or a column position" if self.column else "")

  def problem(self, value: Any) -> str | None:
    if self.column and _is_int(value) and value >= 0:
      return None
    if not isinstance(value, str) or (self.nonempty and not (
        value if self.separator else value.strip())):
      return f"must be {self.text}"
    return None


@dataclasses.dataclass(frozen=True)
class Pattern:
  """A regular expression (Python's `re`), compiled when checked: a bad one
  failed deep in the model's build, in a traceback."""

  text = "a regular expression"

  def problem(self, value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
      return "must be a non-empty regular expression"
    try:
      re.compile(value)
    except re.error as e:
      return f"must be a regular expression: {e}"
    return None


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of the names in `module.attribute` (read when first checked, so
  the list is written once, where the code that uses it lives); `empty`:
  `""` is allowed too."""

  module: str
  attribute: str
  empty: bool = False

  @property
  def choices(self) -> tuple[str, ...]:
    names = tuple(getattr(importlib.import_module(self.module),
                          self.attribute))
    return (("",) if self.empty else ()) + names

  @property
  def text(self) -> str:
    return "one of " + ", ".join(f'"{c}"' for c in self.choices)

  def problem(self, value: Any) -> str | None:
    return None if value in self.choices else f"must be {self.text}"


@dataclasses.dataclass(frozen=True)
class Tuple:
  """A tuple of at least `min_len` values, each allowed by `item`."""

  item: Any
  min_len: int = 0

  @property
  def text(self) -> str:
    count = f"{self.min_len} or more" if self.min_len else "zero or more"
    return f"tuple of {count}: {self.item.text}"

  def problem(self, value: Any) -> str | None:
    if not isinstance(value, (tuple, list)):
      return f"must be a {self.text}"
    if len(value) < self.min_len:
      return (f"must hold at least {self.min_len} value"
              f"{'s' if self.min_len > 1 else ''}")
    for v in value:
      problem = self.item.problem(v)
      if problem is not None:
        return f"each value {problem} (got {excerpt(v)})"
    return None


@dataclasses.dataclass(frozen=True)
class Relation:
  """A fact between keys: `holds(*values)` must be true."""

  keys: tuple[str, ...]
  holds: Any  # callable(*values) -> bool
  text: str

  def problem(self, values: tuple) -> str | None:
    try:
      ok = self.holds(*values)
    except TypeError:  # a value of the wrong type, reported by its own rule
      return None
    return None if ok else self.text
