"""A delimited file's columns as numbers and times, strictly.

The conversions of `delimited.Table` columns that the loaders use: bulk
numpy work where every value converts (a bytes column is read with
Python's `int` and `float` rules, without a `str` per field), and only
where one does not, a walk over the values to name the first line to
blame in an `InputError`.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import NamedTuple

import numpy as np

from metarec_jax.data.convert.delimited import Table
from metarec_jax.data.convert.tokens import Column
from metarec_jax.errors import InputError, excerpt, more_lines

# An integer as integer ids are written: ASCII digits, `-` the only sign,
# no leading zero, space or `_` (all of which Python's `int` accepts), and
# no `-0` (the integer of `0`, so the two ids would become one). One
# definition for the store, which keeps a side's ids as integers when every
# one is such an integer within `INT64`, and the server, which reads a
# URL's id as the store wrote it.
CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*", re.ASCII)
INT64 = (-2 ** 63, 2 ** 63)  # [low, high) of the ids kept as integers


def url_id(text: str) -> int:
  """An integer id given as text (a URL's), as the files write one.

  Raises:
    ValueError: `text` is not an integer so written (ASCII digits, no sign
      but `-`, no leading zero, space or `_`: Python's `int` would read
      `007`, ` 8`, `1_000` and other scripts' digits as some other id), or
      is out of int64's range.
  """
  if not CANONICAL_INT.fullmatch(text):
    raise ValueError(f"user id {text!r} is not an integer")
  value = int(text)
  if not INT64[0] <= value < INT64[1]:
    raise ValueError(f"user id {text} is out of range")
  return value


def _bulk(values, dtype) -> np.ndarray:
  """`values` converted to `dtype` at once (numpy reads a bytes column with
  Python's `int` / `float` rules, without a `str` per field).

  Raises:
    ValueError, OverflowError: some value does not convert.
  """
  raw = values.as_bytes() if isinstance(values, Column) else None
  if raw is not None:
    return raw.astype(dtype)
  python = int if dtype == np.int64 else float
  return np.fromiter(map(python, values), dtype, len(values))


def parse_ints(values) -> tuple[np.ndarray, np.ndarray]:
  """`values` as int64, and the mask of those that are integers (the
  others are 0; `1_000`, 1000 to Python, is a typo in a data file)."""
  try:
    if not _underscored(values):
      return _bulk(values, np.dtype(np.int64)), np.ones(len(values), bool)
  except (ValueError, OverflowError):
    pass
  out, ok = np.zeros(len(values), np.int64), np.zeros(len(values), bool)
  for i, v in enumerate(values):
    if "_" in v:
      continue
    try:
      x = int(v)
    except ValueError:
      continue
    if INT64[0] <= x < INT64[1]:
      out[i], ok[i] = x, True
  return out, ok


def parse_int_ids(values) -> tuple[np.ndarray, np.ndarray]:
  """`values` as int64 ids, and the mask of those written as the store
  writes integer ids (`CANONICAL_INT`, within int64; the others are 0).

  `007`, `+7` and `1_0` are numbers to Python's `int` but not the id 7:
  `data prepare` keeps such ids as text, so a later file (`eval
  --ratings`, `export --ratings`) must not read them as another item.
  """
  out, ok = parse_ints(values)
  raw = None
  if ok.all():  # every field a number: at most a few dozen characters
    raw = (values.as_bytes() if isinstance(values, Column) else
           values if isinstance(values, np.ndarray) else None)
  if raw is not None:
    ok = _canonical_integers(np.char.strip(raw))
  else:
    for i in np.flatnonzero(ok):
      ok[i] = bool(CANONICAL_INT.fullmatch(values[i].strip()))
  return np.where(ok, out, 0), ok


def _canonical_integers(text: np.ndarray) -> np.ndarray:
  """`CANONICAL_INT.fullmatch` of each of `text` (stripped fields, `S` or
  `U`, each an integer to Python's `int` without `_`) from its first two
  characters alone: no `+`, and no zero before another digit (`007`,
  `-0`). (Printing the integers back to compare them took 0.34 s of a
  2-million-line file's 1.3 s parse.)"""
  unit = np.dtype(np.uint8 if text.dtype.kind == "S" else np.uint32)
  width = text.dtype.itemsize // unit.itemsize
  chars = np.ascontiguousarray(text).view(unit).reshape(len(text), width)
  first = chars[:, 0]
  second = chars[:, 1] if width > 1 else np.zeros_like(first)
  return ((first != ord("+")) & ~((first == ord("0")) & (second != 0))
          & ~((first == ord("-")) & (second == ord("0"))))


def not_an_integer(table: Table, values, ok: np.ndarray,
                   what: str) -> InputError:
  """The error at the first line whose value `ok` marks as no integer (or
  none within int64)."""
  i = int(np.flatnonzero(~ok)[0])
  try:
    number = None if "_" in values[i] else int(values[i])
  except ValueError:
    number = None
  if number is None:
    problem = "is not an integer"
  else:
    problem = ("is out of range (integers from -2^63 to 2^63 - 1)"
               if not INT64[0] <= number < INT64[1] else
               f"is not written as the store writes integer ids"
               f" (`{number}`)")
  return InputError(f"{what} {excerpt(values[i].strip())} {problem}"
                    + more_lines(table.lines[~ok]),
                    path=table.path, line=int(table.lines[i]))


def ints(table: Table, values, what: str, *, ids: bool = False
         ) -> np.ndarray:
  """`values` (one per row of `table`) as int64 (`ids`: as
  `parse_int_ids` reads them).

  Raises:
    InputError: naming the first line whose value is not an integer.
  """
  out, ok = (parse_int_ids if ids else parse_ints)(values)
  if not ok.all():
    raise not_an_integer(table, values, ok, what)
  return out


def _iso_seconds(values) -> tuple[np.ndarray, np.ndarray]:
  """`values` as seconds since 1970-01-01 UTC (float64, their fractions
  kept) where they are ISO 8601 dates or date-times (a date-time without
  an offset is read as UTC), and the mask of those that are (the others
  are 0)."""
  out, ok = np.zeros(len(values), np.float64), np.zeros(len(values), bool)
  for i, v in enumerate(values):
    v = v.strip()
    try:
      t = datetime.datetime.fromisoformat(
          v[:-1] + "+00:00" if v.endswith(("Z", "z")) else v)
    except ValueError:
      continue
    if t.tzinfo is None:
      t = t.replace(tzinfo=datetime.timezone.utc)
    out[i], ok[i] = t.timestamp(), True
  return out, ok


def _is_number(value) -> bool:
  """A finite number as `floats` reads one (`1_0` is none)."""
  try:
    return "_" not in value and math.isfinite(float(value))
  except ValueError:
    return False


class Times(NamedTuple):
  """A parsed time column. `stored`: int64, integers as they are (any
  unit), other times floored to whole seconds; `order`: the times exactly
  (float64 seconds where `stored` was floored, else `stored`), what puts
  a user's ratings in time order: a click log's events of one second keep
  theirs."""
  stored: np.ndarray
  order: np.ndarray


def _clock_seconds(table: Table, values, what: str, exact=None) -> Times:
  """`values` (a float clock: `1614853321.25`; `exact`: already read as
  float64) floored to whole seconds.

  Raises:
    InputError: naming the first line whose value is not a finite number
      or is out of int64's range.
  """
  exact = floats(table, values, what) if exact is None else exact
  out = np.floor(exact)
  bad = np.flatnonzero(~((out >= INT64[0]) & (out < INT64[1])))
  if len(bad):
    i = int(bad[0])
    raise InputError(f"{what} {excerpt(values[i].strip())} is out of range"
                     " (times from -2^63 to 2^63 - 1)"
                     + more_lines(table.lines[bad]),
                     path=table.path, line=int(table.lines[i]))
  # float64 holds whole numbers exactly only below 2^53: epoch nanoseconds
  # beside a fraction were rounded alike, their order lost.
  big = np.flatnonzero(np.abs(exact) >= 2.0**53)
  if len(big):
    i = int(big[0])
    raise InputError(f"{what} {excerpt(values[i].strip())} is too large for"
                     " a clock with fractions (2^53 and beyond lose their"
                     " last digits): write every time as a whole number"
                     + more_lines(table.lines[big]),
                     path=table.path, line=int(table.lines[i]))
  return Times(out.astype(np.int64), exact)


def times(table: Table, values, what: str) -> Times:
  """`values` (one per row of `table`) as times (`Times`): integers as they
  are (any unit); numbers of which some are not integers (a float clock:
  `1614853321.25`, whole seconds written without a fraction among them) in
  seconds; or ISO 8601 dates or date-times (`2021-03-04`, `2021-03-04
  10:22:01`, `2021-03-04T10:22:01.5+02:00`) as seconds since 1970-01-01
  UTC. Only their order matters (a user's ratings in time order).

  Raises:
    InputError: naming the first line whose value is not of the first
      line's kind.
  """
  kind = clock_of(values)  # by the first value: the file's kind of time
  if kind == "seconds":
    return _clock_seconds(table, values, what)
  if kind != "iso":  # integers (or no values), or a float clock
    out, ok = parse_ints(values)
    if ok.all():
      return Times(out, out)
    if all(_is_number(values[i]) for i in np.flatnonzero(~ok)):
      return _clock_seconds(table, values, what)  # a float clock
    raise not_an_integer(table, values, ok, what)
  exact, ok = _iso_seconds(values)
  if not ok[0]:  # no time at all: not an ISO time "as the first line's is"
    # (an error path: the loop reads only the lines that are not ISO)
    none = [i for i in np.flatnonzero(~ok) if not _is_number(values[i])]
    raise InputError(
        f"{what} {excerpt(values[0].strip())} is not a time (an integer, a"
        " number of seconds, or an ISO 8601 date or time like 2021-03-04)"
        + more_lines(table.lines[none]),
        path=table.path, line=int(table.lines[0]))
  if not ok.all():
    i = int(np.flatnonzero(~ok)[0])
    raise InputError(
        f"{what} {excerpt(values[i].strip())} is not an ISO 8601 date or"
        " time (like 2021-03-04 or 2021-03-04T10:22:01) as the first line's"
        f" is (line {int(table.lines[0])}: one file, one kind of time)"
        + more_lines(table.lines[~ok]),
        path=table.path, line=int(table.lines[i]))
  return _clock_seconds(table, values, what, exact)


def clock_of(values) -> str | None:
  """The kind of time `times` reads `values` as, by the first value:
  `integer` (any unit), `seconds` (a float clock) or `iso` (ISO 8601
  dates or date-times); None for no values."""
  if not len(values):
    return None
  if parse_ints(values[:1])[1][0]:
    return "integer"
  return "seconds" if _is_number(values[0]) else "iso"


def _underscored(values) -> bool:
  """Whether some value holds a `_` (Python reads `1_0` as 10)."""
  raw = values.as_bytes() if isinstance(values, Column) else None
  if raw is not None:
    return bool((np.char.find(raw, b"_") >= 0).any())
  return any("_" in v for v in values)


def floats(table: Table, values, what: str, hint: str = "") -> np.ndarray:
  """`values` (one per row of `table`) as finite float64.

  Raises:
    InputError: naming the first line whose value is not a finite number
      (with the decimal comma named where that is the cause, else `hint`).
  """
  try:
    out = _bulk(values, np.dtype(np.float64))
    bad = np.flatnonzero(~np.isfinite(out))
  except ValueError:
    out, bad = None, None
  if out is not None and not len(bad) and not _underscored(values):
    return out
  # Python's `float` on each `str`: it also reads what the bulk conversion
  # of bytes does not (a trailing no-break space, other scripts' digits),
  # and `1_0` as 10, a typo rather than a number in a data file.
  out = np.empty(len(values), np.float64)
  bad = []
  for i, v in enumerate(values):
    try:
      out[i] = math.nan if "_" in v else float(v)
    except ValueError:
      out[i] = math.nan
    if not math.isfinite(out[i]):
      bad.append(i)
  if bad:
    v = values[bad[0]]
    comma = bool(re.fullmatch(r"\s*[-+]?\d+,\d+\s*", v))
    raise InputError(f"{what} {excerpt(v.strip())} is not a finite"
                     " number" + (" (write decimals with a '.', not a ',')"
                                  if comma else hint)
                     + more_lines(table.lines[bad]),
                     path=table.path, line=int(table.lines[bad[0]]))
  return out


# Clocks a file's times can be written in: ISO 8601, or integer ticks of
# these many per second (a float clock's seconds are `seconds` too).
TICKS_PER_SECOND = {"seconds": 1, "milliseconds": 10 ** 3,
                    "microseconds": 10 ** 6, "nanoseconds": 10 ** 9}


class FileClock(NamedTuple):
  """How a new time is written so that it reads as later than a file's:
  `unit`, `iso` or a unit of `TICKS_PER_SECOND`; `latest`, the file's
  newest time in that unit (seconds for `iso`; None: not known, an export
  written before it was recorded)."""
  unit: str
  latest: int | None = None


def clock_of_file(kind: str | None, times: np.ndarray | None
                  ) -> FileClock | None:
  """The clock of `times` (a file's, of `clock_of` kind `kind`): `iso`, or
  that of numeric times (integers or a float clock) judged by their size
  (epoch milliseconds are above 1e11 from 1973 on; seconds, or a counter,
  stay `seconds`); None without times."""
  if kind is None or times is None:
    return None
  latest = int(np.floor(np.max(times))) if len(times) else None
  if kind == "iso":
    return FileClock("iso", latest)
  # Integers, or a float clock (its floored values): by their size.
  top = max(abs(int(np.min(times))), abs(int(np.max(times)))) if len(
      times) else 0
  for unit, limit in (("nanoseconds", 1e17), ("microseconds", 1e14),
                      ("milliseconds", 1e11)):
    if top > limit:
      return FileClock(unit, latest)
  return FileClock("seconds", latest)


def now_in(clock: FileClock, when: float) -> str | int:
  """The time `when` (seconds since 1970 UTC) in `clock`, or just after
  its file's latest where that is later: the size of a file's numbers
  only guesses their unit (tenths of seconds, or dates in the future, read
  as seconds), and a logged rating older than the file's took the joined
  file's newest ratings for the user's older ones in a retrain."""
  if clock.unit == "iso":
    if clock.latest is not None:
      when = max(when, clock.latest + 1)
    return datetime.datetime.fromtimestamp(
        int(when), datetime.timezone.utc).isoformat().replace("+00:00", "Z")
  ticks = int(when * TICKS_PER_SECOND[clock.unit])
  return ticks if clock.latest is None else max(ticks, clock.latest + 1)
