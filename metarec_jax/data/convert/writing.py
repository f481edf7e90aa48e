"""The writing of delimited text files (ratings files, the server's log),
each field quoted where `delimited.read_table(quoting="auto")` would
otherwise read it as another value."""

from __future__ import annotations

import numpy as np


def quote_fields(values, delimiter: str, quote: bool = True) -> np.ndarray:
  """`values` as strings, CSV-quoted where they hold `delimiter` or a
  quote, so that `read_table(quoting="auto")` reads them back as they
  are; a delimiter of several characters, or `quote` False (a format
  read with quotes as text), quotes nothing (its reader reads quotes as
  text: `i0" pizza` was written `"i0"" pizza"`, another id).

  Raises:
    ValueError: a value that holds the delimiter, where nothing is quoted.
  """
  values = np.asarray(values).astype(str)
  if len(delimiter) > 1 or not quote:
    held = np.flatnonzero(np.char.find(values, delimiter) >= 0)
    if len(held):
      raise ValueError(f"{values[held[0]]!r} holds the delimiter"
                       f" {delimiter!r}: it cannot be written as one field")
    return values
  need = ((np.char.find(values, delimiter) >= 0)
          | (np.char.find(values, '"') >= 0))
  if not need.any():
    return values
  out = values.astype(object)
  out[need] = ['"' + v.replace('"', '""') + '"' for v in values[need]]
  return out.astype(str)


def join_lines(columns: list[np.ndarray], delimiter: str) -> str:
  """Text lines of the string arrays `columns` (one field each, equal
  lengths) joined by `delimiter`, every line ending in a newline."""
  line = columns[0]
  for column in columns[1:]:
    line = np.char.add(np.char.add(line, delimiter), column)
  return "".join(f"{row}\n" for row in line.tolist())
