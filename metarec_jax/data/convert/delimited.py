"""Strict reading of delimited text files (the loaders' only parser;
`writing` writes them).

Every problem is an `InputError` naming the file and the 1-based line:
undecodable bytes, a wrong number of fields, a column named twice (the
fields' conversion to numbers and times, with the same errors, is
`parsing`'s). The happy path is bulk numpy work over the file's bytes: a
field is a pair of offsets, not a Python string, so a file of millions of
lines costs about a hundred bytes per line beside its own size while it
is parsed (`tools/bench_parse.py`).

Conventions of every reader here: `\\r\\n` and `\\n` both end a line (and
`\\r` in a file without `\\n`: old Mac and Excel "CSV (Macintosh)"
files), a UTF-8 byte order mark is dropped (and refused in a file read
in another encoding, where it would be text; so is a UTF-16 or UTF-32
one), and blank lines are skipped (line numbers still count them).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import os
import re

import numpy as np

from metarec_jax.data.convert import sniff
from metarec_jax.data.convert.tokens import Column, Fields, tokenize
from metarec_jax.errors import InputError, excerpt, more_lines


@dataclasses.dataclass
class Table:
  """The rows of a delimited file, held by column.

  Attributes:
    path: the file.
    header: the column names when the file has a header line, else None.
    columns: the fields of every data line, one `Column` per field.
    lines: int64 [N], the 1-based line number of every row.
    header_line: the header's line number (1 unless blank lines precede it).
    delimiter: its field separator (`delimiter_key`: the key that set it).
  """

  path: str
  header: list[str] | None
  columns: list[Column]
  lines: np.ndarray
  header_line: int = 1
  delimiter: str = ","
  delimiter_key: str = ""

  def __len__(self) -> int:
    return len(self.lines)

  @property
  def width(self) -> int:
    """Fields per row."""
    return len(self.columns)

  def column(self, index: int) -> Column:
    return self.columns[index]

  def position(self, name: str) -> int:
    """The index of the header column `name`."""
    assert self.header is not None
    try:
      return self.header.index(name)
    except ValueError:
      raise LayoutError(
          f"no column {name!r} in the header (columns: "
          f"{excerpt(', '.join(self.header), 200)[1:-1]}){self.hint(name)}",
          path=self.path, line=self.header_line) from None

  def hint(self, name: str = "") -> str:
    """The likely cause of a missing column: a 0-based position given for
    a file read with a header, or a header of one field holding a common
    separator (the file is split on another delimiter than it uses)."""
    if name.isdigit():
      return ("; a 0-based column position needs a file without a header"
              " (data.generic.header=false)")
    if len(self.header) != 1:
      return ""
    return delimiter_hint(self.header[0], self.delimiter, "the header",
                          self.delimiter_key)


def delimiter_hint(field: str, delimiter: str, what: str,
                   key: str = "") -> str:
  """`"; WHAT is one field split on D: is the delimiter S? (KEY)"` where
  the one field `field` of a line holds a common separator S other than
  `delimiter` (the file uses another delimiter), else `""`. `key`: the
  config key that set `delimiter`, if any. A `#` line is a comment, not
  a file split on a space (which was suggested)."""
  if field.lstrip().startswith("#"):
    return (f"; {what} looks like a comment ({excerpt(field.strip())}):"
            " remove comment lines, a delimited file has none")
  for sep in ("\t", ";", ",", "|", " "):
    if sep != delimiter and sep in field.strip():
      return (f"; {what} is one field split on {delimiter!r}: is the"
              f" delimiter {sep!r}?" + f" ({key})" * bool(key))
  return ""


def _position(data, at: int) -> tuple[int, int]:
  """1-based line and column of offset `at` in `data` (bytes or text),
  with line ends as the readers see them: `\n`, or `\r` in a file
  without `\n` (`cr_lines`)."""
  nl, cr = ("\n", "\r") if isinstance(data, str) else (b"\n", b"\r")
  end = nl if nl in data else cr
  return (data.count(end, 0, at) + 1,
          at - (data.rfind(end, 0, at) + 1) + 1)


class LayoutError(InputError):
  """A file's lines are not laid out as its reader expects: another number
  of fields, or a column the header lacks (its delimiter is likely not the
  one read with)."""


class NotInEncoding(InputError):
  """A file holds bytes that are not text in the encoding it is read in
  (a loader whose encoding is a config key adds the key)."""


def read_text(path: str | os.PathLike, encoding: str) -> str:
  """The decoded text of `path`.

  Raises InputError: missing, unreadable, compressed, empty (blank),
  bytes not valid in `encoding`, or a NUL.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise InputError("no such file", path=path) from None
  except OSError as e:
    raise InputError(f"cannot read: {e.strerror}", path=path) from None
  sniff.refuse_packed(raw, path)
  sniff.refuse_wide_bom(raw, encoding, path)
  try:
    text = raw.decode(encoding)
  except UnicodeDecodeError as e:
    line, column = _position(raw, e.start)
    raise NotInEncoding(
        f"byte 0x{raw[e.start]:02x} at column {column} is not valid"
        f" {encoding} text", path=path, line=line) from None
  except LookupError:
    raise InputError(f"unknown text encoding {encoding!r}", path=path) from None
  if (raw.startswith(codecs.BOM_UTF8)
      and codecs.lookup(encoding).name not in ("utf-8", "utf-8-sig")):
    # Read as Latin-1 or cp1252 the mark is the text `ï»¿`: the first
    # line's id (or column name) would silently be another one.
    raise InputError(f"the file starts with a UTF-8 byte order mark but is"
                     f" read as {encoding}: it is UTF-8 text (set the"
                     " encoding to utf-8)", path=path, line=1)
  nul = text.find("\0")
  if nul >= 0:  # ids would lose it silently (numpy strips trailing NULs)
    line, column = _position(text, nul)
    raise InputError(f"a NUL byte at column {column} (a damaged file, or"
                     " not text)", path=path, line=line)
  if text.startswith("\ufeff"):
    text = text[1:]
  text = cr_lines(text)
  bom = text.find("\n\ufeff")  # files joined: `c1` would be another id
  if bom >= 0:
    raise InputError("a byte order mark (U+FEFF) starts this line: files"
                     " joined together? (remove it)", path=path,
                     line=_position(text, bom + 1)[0])
  if not text.strip():
    raise InputError("empty file", path=path)
  sniff.refuse_json(text, path)
  return text


def cr_lines(text: str) -> str:
  """`text` with its line ends as `\\n` where `\\r` alone ends them (no
  `\\n` anywhere: old Mac and Excel "CSV (Macintosh)" files); elsewhere a
  lone `\\r` stays part of its line."""
  if "\r" in text and "\n" not in text:
    return text.replace("\r", "\n")
  return text


def _lines(text: str) -> tuple[list[str], np.ndarray]:
  """Non-blank lines and their 1-based numbers."""
  lines = text.replace("\r\n", "\n").split("\n")
  keep = [i for i, line in enumerate(lines) if line.strip()]
  return [lines[i] for i in keep], np.asarray(keep, np.int64) + 1


def read_table(path: str | os.PathLike, *, delimiter: str, encoding: str,
               header: bool = False, num_fields: tuple[int, ...] = (),
               quoting: bool = False, allow_no_rows: bool = False,
               delimiter_key: str = "") -> Table:
  """Reads a delimited file whose lines all have the same number of fields.

  Args:
    path: the file.
    delimiter: the field separator (any string; `quoting` needs one char).
    encoding: the text encoding.
    header: the first non-blank line names the columns.
    num_fields: the allowed field counts (the first line picks one, the
      others must match it); empty = whatever the first line (or header)
      has.
    quoting: fields may be quoted with `"` (CSV style: a quoted field may
      hold the delimiter; `""` is a quote inside one). `"auto"`: where the
      file holds a `"` and the delimiter is one character (a file without
      quotes keeps the fast byte tokenizer; a quote inside an unquoted
      field stays part of it).
    allow_no_rows: a header without data lines is a table of no rows (a
      file we wrote for zero records) instead of an error.
    delimiter_key: the config key that set `delimiter`, named in the hint
      where the file looks split on another delimiter than it uses.

  Raises:
    InputError: as `read_text`, or a line with another number of fields,
      or a header without data lines (unless `allow_no_rows`).
  """
  path = os.fspath(path)
  raw = read_text(path, encoding).encode("utf-8")
  if quoting == "auto":
    quoting = len(delimiter) == 1 and b'"' in raw
  tokens = None if quoting else tokenize(raw, delimiter)
  if tokens is None:  # quoted fields (side tables), or no byte stands in
    text = raw.decode("utf-8")
    del raw
    lines, numbers = _lines(text)
    rows = (_csv_rows(lines, numbers, delimiter, path,
                      quoting_hint=delimiter_key.startswith("data.generic"))
            if quoting and len(delimiter) == 1
            else [line.split(delimiter) for line in lines])
    del text, lines
    counts = np.fromiter(map(len, rows), np.int64, len(rows))
  else:
    del raw
    data, sep, starts, ends, numbers, cuts = tokens
    first_cut = np.searchsorted(cuts, starts)  # each line's first delimiter
    counts = np.searchsorted(cuts, ends) - first_cut + 1
  names, first = None, int(numbers[0])
  if header:
    names = [n.strip() for n in (
        rows[0] if tokens is None
        else data[starts[0]:ends[0]].tobytes().decode().split(sep))]
    _unique_names(names, path, first)
    counts, numbers = counts[1:], numbers[1:]
    if tokens is None:
      rows = rows[1:]
    else:
      starts, ends, first_cut = starts[1:], ends[1:], first_cut[1:]
    if not len(numbers) and not allow_no_rows:
      raise InputError("no data lines after the header", path=path)
  expected = len(names) if names is not None else int(counts[0])
  hint = ""
  if expected == 1:  # the first line is one field: another delimiter?
    one = (names[0] if names is not None else rows[0][0]
           if tokens is None else data[starts[0]:ends[0]].tobytes().decode())
    hint = delimiter_hint(one, delimiter, f"line {first}", delimiter_key)
  if num_fields and expected not in num_fields:
    # A fixed layout's file (MovieLens) split by another separator.
    raise LayoutError(
        f"{expected} field(s) separated by {delimiter!r}, expected"
        f" {' or '.join(map(str, num_fields))}{hint}", path=path, line=first)
  bad = np.flatnonzero(counts != expected)
  if len(bad):
    i = int(bad[0])
    raise LayoutError(
        f"{counts[i]} field(s) separated by {delimiter!r}, expected"
        f" {expected} like line {first}{hint}"
        + more_lines(numbers[bad], of="of another field count"),
        path=path, line=int(numbers[i]))
  if tokens is None:
    columns = [Column([r[j] for r in rows]) for j in range(expected)]
  else:
    at = first_cut[:, None] + np.arange(expected - 1)
    fields = Fields(data, starts, ends, cuts[at])
    columns = [Column(fields=fields, index=j) for j in range(expected)]
  return Table(path, names, columns, numbers, first, delimiter, delimiter_key)


def id_strings(table: Table, index: int, what: str) -> np.ndarray:
  """Column `index` of `table` as stripped strings (`Column.strings`),
  refusing one id so long that the array would blow up.

  A numpy string array holds every entry at its longest's width (4 bytes a
  character): one 30,000-character id among 9,000 short ones makes 1 GB
  from a 200 KB file. Refused beyond 512 MiB and 16 times the file's
  size.

  Raises:
    InputError: naming the line of the longest id.
  """
  column = table.column(index)
  widths = column.widths()  # bytes (characters where held as strings)
  budget = max(2 ** 29, 16 * os.path.getsize(table.path))
  if 4 * len(widths) * int(widths.max(initial=0)) > budget:
    # Bytes overstate characters (UTF-8): count those of the long ones.
    long = np.flatnonzero(4 * len(widths) * widths > budget)
    chars = np.array([len(column[int(i)]) for i in long])
    size = 4 * len(widths) * int(chars.max())
    if size > budget:
      i = int(long[np.argmax(chars)])
      raise InputError(
          f"{what} of {int(chars.max()):,} characters: every {what} would be"
          f" held that wide ({size / 2 ** 20:,.0f} MiB for {len(widths):,}"
          " lines); shorten or hash such ids", path=table.path,
          line=int(table.lines[i]))
  return column.strings()


def _unique_names(names: list[str], path: str, line: int) -> None:
  """Raises InputError where a header names a column twice: which of
  the two a key means would be a guess."""
  seen = {}
  for i, name in enumerate(names):
    if name and name in seen:
      raise InputError(f"column {excerpt(name)} appears twice in the header"
                       f" (fields {seen[name] + 1} and {i + 1})", path=path,
                       line=line)
    seen.setdefault(name, i)


def _csv_rows(lines, numbers, delimiter, path,
              quoting_hint: bool = False) -> list[list[str]]:
  # One line, one record: a quoted field may hold the delimiter but not a
  # line break, which keeps line numbers exact. Spaces after a delimiter
  # are skipped, so that `a, "b", 4` quotes `b` (fields are stripped
  # anyway: without it the id would be `"b"`, quotes and all, another id
  # than `b`), and a line strict csv refuses for spaces after a closing
  # quote (`"b" ,`) is read again without them; not where a space is the
  # delimiter (two in a row are an empty field there).
  rows = []
  skip = delimiter != " "
  trailing = re.compile(rf'"[ \t]+(?={re.escape(delimiter)}|[\r\n]*$)')
  def read(text):
    return next(csv.reader(io.StringIO(text), delimiter=delimiter,
                           strict=True, skipinitialspace=skip))
  for line, number in zip(lines, numbers):
    try:
      try:
        rows.append(read(line))
      except csv.Error:
        if not skip or not trailing.search(line):
          raise
        rows.append(read(trailing.sub('"', line)))
    except csv.Error as e:
      # The line ends inside quotes: most often a field with a line break
      # (Excel's Alt+Enter), which "unexpected end of data" did not say.
      problem = ("a quoted field is not closed on this line (a line break"
                 " inside quotes? a field may not span lines)"
                 if "unexpected end of data" in str(e)
                 else f"malformed quoting: {e}")
      if quoting_hint:  # a file of one's own, being prepared
        problem += (" (fields are read CSV-quoted: the file holds a '\"';"
                    " data.generic.quoting=none reads a '\"' as text)")
      raise InputError(problem, path=path, line=int(number)) from None
  return rows


def refuse_repeated_header(table: Table, candidates: np.ndarray,
                           columns) -> None:
  """Raises InputError at the first data line (of those `candidates`
  marks) whose fields in `columns` are the header's names of them: files
  joined with their headers (`cat jan.csv feb.csv`), which would otherwise
  add a user or item named like the id column's header."""
  for i in np.flatnonzero(candidates):
    if all(table.column(j)[int(i)].strip() == table.header[j]
           for j in columns):
      raise InputError("this line repeats the header (files joined with"
                       " their headers? remove the repeated header lines)",
                       path=table.path, line=int(table.lines[i]))


def unique_ids(table: Table, ids: np.ndarray, what: str) -> None:
  """Raises InputError at the second line of the first repeated id."""
  order = np.argsort(ids, kind="stable")
  dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
  if len(dup):
    i = int(np.min(order[dup + 1]))
    raise InputError(f"{what} {excerpt(ids[i], quote=False)} appears twice",
                     path=table.path, line=int(table.lines[i]))
