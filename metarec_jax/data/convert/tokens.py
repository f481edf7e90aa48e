"""A delimited file's lines and fields as offsets into its bytes.

`delimited.read_table` reads every unquoted file through `tokenize`: numpy
finds the newlines and delimiters of the file's UTF-8 bytes block by block,
and each column is a `Column` over those offsets, so a field costs eight
bytes instead of a Python string of about fifty. The lines and fields are
exactly those of splitting the decoded text (`tests/test_delimited.py`).
"""

from __future__ import annotations

import collections.abc

import numpy as np


class Column(collections.abc.Sequence):
  """One column of a `delimited.Table`: a sequence of the fields' `str`s.

  The fields of a large file are not held as Python strings (about 50
  bytes each): a column read by the byte tokenizer keeps the file's UTF-8
  bytes and each field's offsets, and makes a `str` only when one is asked
  for. `as_bytes()` gives the whole column as one numpy bytes array, which
  numpy converts to numbers in bulk (with Python's `int` and `float`
  rules).
  """

  def __init__(self, values: list[str] | None = None, *,
               fields: Fields | None = None, index: int = 0):
    self._values, self._fields, self._index = values, fields, index
    # `as_bytes` by `max_width`: a parse asks more than once (the check
    # for `_`, the conversion, the ids' spelling).
    self._bytes: dict[int, np.ndarray | None] = {}

  def __len__(self) -> int:
    if self._values is not None:
      return len(self._values)
    return len(self._fields.starts)

  def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
    return self._fields.bounds(self._index)

  def __getitem__(self, i):
    if self._values is not None:
      return self._values[i]
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    start, end = self._fields.field(i, self._index)
    return self._fields.data[start:end].tobytes().decode()

  def __iter__(self):
    if self._values is not None:
      return iter(self._values)
    return (self[i] for i in range(len(self)))

  def widths(self) -> np.ndarray:
    """Each field's length: in bytes where held as bytes, else in
    characters (before stripping)."""
    if self._values is not None:
      return np.fromiter(map(len, self._values), np.int64, len(self._values))
    starts, ends = self._bounds()
    return ends - starts

  def as_bytes(self, max_width: int = 64) -> np.ndarray | None:
    """The fields as a numpy `S` array, or None where they are not held as
    bytes or one is longer than `max_width` bytes (no number is; an id
    column asks for any width). Made once per width; not to be written."""
    if self._values is not None:
      return None
    if max_width not in self._bytes:
      self._bytes[max_width] = self._gather(max_width)
    return self._bytes[max_width]

  def _gather(self, max_width: int) -> np.ndarray | None:
    starts, ends = self._bounds()
    widths = ends - starts
    width = int(widths.max()) if len(widths) else 1
    if width > max_width:
      return None
    width = max(width, 1)
    data = self._fields.data
    out = np.zeros((len(widths), width), np.uint8)
    last = max(len(data) - 1, 0)
    for c in range(width):  # one gather per byte position: O(rows) memory
      out[:, c] = np.where(widths > c, data[np.minimum(starts + c, last)], 0)
    out.flags.writeable = False  # kept and handed out again
    return out.view(f"S{width}").ravel()

  def strings(self) -> np.ndarray:
    """The fields stripped of surrounding whitespace (`str.strip`), as a
    numpy `str` array."""
    raw = self.as_bytes() if self._fields is not None else None
    if raw is None:
      return np.asarray([v.strip() for v in self], dtype=str)
    text = (raw.astype(str) if self._fields.ascii
            else np.strings.decode(raw, "utf-8"))
    return np.strings.strip(text)


class Fields:
  """Where the fields of a tokenized file lie in its UTF-8 bytes.

  `data` holds the bytes (the delimiter one byte, `tokenize`), `starts` /
  `ends` each row's line and `cuts` `[rows, width - 1]` the positions of
  its delimiters: field j of a row runs from after cut j - 1 (or the line
  start) to cut j (or the line end)."""

  def __init__(self, data, starts, ends, cuts):
    self.data, self.starts, self.ends, self.cuts = data, starts, ends, cuts
    self.ascii = bool(len(data) == 0 or data.max() < 0x80)

  def bounds(self, j: int) -> tuple[np.ndarray, np.ndarray]:
    width = self.cuts.shape[1] + 1
    start = self.starts if j == 0 else self.cuts[:, j - 1] + 1
    end = self.ends if j == width - 1 else self.cuts[:, j]
    return start, end

  def field(self, i: int, j: int) -> tuple[int, int]:
    width = self.cuts.shape[1] + 1
    start = self.starts[i] if j == 0 else self.cuts[i, j - 1] + 1
    end = self.ends[i] if j == width - 1 else self.cuts[i, j]
    return int(start), int(end)


# Python's `str.isspace` among the ASCII characters.
_SPACE = np.zeros(256, bool)
_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
_ONE_BYTE = b"\x1f"  # stands for a longer delimiter while tokenizing
BLOCK = 1 << 24  # bytes tokenized at a time: bounds the temporaries


def tokenize(raw: bytes, delimiter: str):
  """The non-blank lines of the UTF-8 text `raw` and its delimiters, as
  numpy arrays over its bytes: `(data, sep, starts, ends, numbers, cuts)`,
  where line `numbers[i]` (1-based) spans `data[starts[i]:ends[i]]`, `cuts`
  are the positions of every delimiter and `sep` is the one-character
  delimiter of `data`. Lines and fields are those of `delimited._lines`
  and `str.split`. Memory: the bytes, 8 bytes per delimiter and 24 per line,
  and temporaries of one `BLOCK`.

  None where `delimiter` is empty, or longer than one byte and `raw`
  holds the byte that would stand for it.
  """
  step = delimiter.encode("utf-8")
  if not step:
    return None
  sep = delimiter
  if len(step) > 1:
    # bytes.replace, like str.split, cuts at non-overlapping occurrences
    # from the left, and UTF-8 finds a character's bytes only where the
    # character is: one byte may stand for the delimiter exactly.
    if _ONE_BYTE in raw:
      return None
    raw, sep = raw.replace(step, _ONE_BYTE), _ONE_BYTE.decode()
  data = np.frombuffer(raw, np.uint8)
  # A line is blank when `str.strip` leaves nothing of it; a delimiter
  # standing for a longer one is content unless that one is whitespace.
  space = _SPACE.copy()
  if sep != delimiter and not delimiter.isspace():
    space[ord(sep)] = False
  parts, lines_before, lo = [], 0, 0
  while lo < len(data):
    hi = min(lo + BLOCK, len(data))
    if hi < len(data):  # whole lines only: up to a newline, or the end
      newline = raw.find(b"\n", hi - 1)
      hi = len(data) if newline < 0 else newline + 1
    part = _tokenize_block(data, lo, hi, space, ord(sep), lines_before,
                           last=hi == len(data))
    lines_before += part[-1]
    parts.append(part[:-1])
    lo = hi
  starts, ends, numbers, cuts = (np.concatenate(p) for p in zip(*parts))
  return data, sep, starts, ends, numbers, cuts


def _tokenize_block(data, lo, hi, space, sep, lines_before, *, last):
  """`tokenize` of the whole lines `data[lo:hi]`: (starts, ends,
  numbers, cuts, physical lines)."""
  block = data[lo:hi]
  newlines = np.flatnonzero(block == 10)
  starts = np.concatenate([[0], newlines + 1])
  if not last:  # the block ends in a newline; what follows is the next's
    starts = starts[:-1]
  ends = np.append(newlines, len(block))[:len(starts)]
  # `\r\n` ends a line: the `\r` before a `\n` is not part of it.
  ended = ends < len(block)
  ends -= ended & (ends > starts) & (block[np.maximum(ends - 1, 0)] == 13)
  content = ~space[block]
  keep = _count(content, starts) > 0
  high = block >= 0x80
  if high.any():  # non-ASCII whitespace (U+00A0, ...) blanks a line too
    for i in np.flatnonzero(keep & (_count(content & ~high, starts) == 0)):
      keep[i] = bool(block[starts[i]:ends[i]].tobytes().decode().strip())
  numbers = np.flatnonzero(keep).astype(np.int64) + 1 + lines_before
  cuts = np.flatnonzero(block == sep) + lo
  return starts[keep] + lo, ends[keep] + lo, numbers, cuts, len(starts)


def _count(mask: np.ndarray, starts: np.ndarray) -> np.ndarray:
  """How many of `mask[starts[i]:starts[i + 1]]` are set (the last: to the
  end), for every i; `starts` increasing, at most `len(mask)`."""
  padded = np.append(mask, False)  # an empty last line has a place
  return np.add.reduceat(padded, starts, dtype=np.int64)
