"""Which items are *new* in the cold-start protocol (generic data).

`data.generic.new_item_col` names a column of the item table: a 0/1 flag,
or, with `data.generic.new_item_year` > 0, the item's year, new when it is
that year or later. A year may be written as a year (`2019`) or as an ISO
8601 date or date-time (`2019-05-01`, a release date), whose year counts;
an empty value is unknown: not new.
"""

from __future__ import annotations

import datetime
import re

import numpy as np

from metarec_jax.data.convert import delimited
from metarec_jax.errors import InputError, excerpt, more_lines

_INTEGER = re.compile(r"[-+]?\d{1,18}", re.ASCII)  # a year, as int64
# An ISO 8601 date, alone or starting a date-time: its year is read.
_ISO_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[T ].*)?", re.ASCII)


def _year(value: str) -> int | None:
  """The year of `value` (a year, or an ISO 8601 date or date-time; empty:
  0), None where it is neither."""
  if not value:
    return 0
  if _INTEGER.fullmatch(value):
    return int(value)
  date = _ISO_DATE.fullmatch(value)
  try:
    return datetime.date.fromisoformat(date.group(1)).year if date else None
  except ValueError:  # 2019-13-45
    return None


def years(table: delimited.Table, values: list[str], column: str) -> np.ndarray:
  """Each value's year (`_year`).

  Raises:
    InputError: at the first line whose value is neither (counting the
      others).
  """
  out = [_year(v) for v in values]
  bad = [i for i, y in enumerate(out) if y is None]
  if bad:
    raise InputError(
        f"{column} {excerpt(values[bad[0]])} is neither a year nor an ISO"
        " 8601 date (data.generic.new_item_year compares years)"
        + more_lines(table.lines[bad]), path=table.path,
        line=int(table.lines[bad[0]]))
  return np.asarray(out, np.int64)


def item_new(column: str, year: int, table: delimited.Table | None,
             rows: np.ndarray | None, num_items: int
             ) -> tuple[np.ndarray, str]:
  """`(new, rule)`: which of `num_items` items are new, and the rule in
  words (for the store's manifest).

  Args:
    column: `data.generic.new_item_col` (empty: no item is new).
    year: `data.generic.new_item_year` (0: the column is a 0/1 flag).
    table: the item feature table (None: none is named).
    rows: each table row's item index.
    num_items: the number of items.
  """
  new = np.zeros(num_items, bool)
  if not column:
    return new, "no item is new (data.generic.new_item_col is empty)"
  if table is None:
    raise InputError("data.generic.new_item_col needs"
                     " data.generic.item_features")
  values = [v.strip() for v in table.column(table.position(column))]
  if year:
    new[rows] = years(table, values, column) >= year
    return new, f"new = {column} of the item table is {year} or later"
  flags = np.asarray(values, dtype=str)
  bad = np.flatnonzero((flags != "0") & (flags != "1"))
  if len(bad):
    raise InputError(
        f"{column} {excerpt(str(flags[bad[0]]))} is not 0 or 1 (for a year"
        " or a date, set data.generic.new_item_year)"
        + more_lines(table.lines[bad]), path=table.path,
        line=int(table.lines[bad[0]]))
  new[rows] = flags == "1"
  return new, f"new = {column} of the item table is 1"
