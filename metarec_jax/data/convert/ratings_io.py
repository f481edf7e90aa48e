"""Ratings files in a dataset's own input format: parse, read, write.

Every store built from files records how its ratings file is laid out
(`manifest["ratings_format"]`, a `RatingsFormat`), so that `metarec eval
--ratings=FILE` reads new users' ratings in the very format the dataset came
in, and `--write_tasks` writes the tasks it used back in that format
(`eval/task_files.py`).
Stores without a recorded format (synthetic data) use `DEFAULT_FORMAT`
(CSV with a `user,item,rating` header) with the store's rating scale.

Parsing is strict: a malformed line, a non-numeric id where the dataset has
integer ids, a rating off the declared scale or undecodable bytes is an
`InputError` naming the file and the line.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from metarec_jax import atomic
from metarec_jax.data.convert import delimited, exact, notes, parsing, writing
from metarec_jax.data.store import TaskStore
from metarec_jax.errors import InputError, excerpt, more_lines

ROLES = ("user", "item", "rating", "timestamp")


@dataclasses.dataclass(frozen=True)
class RatingsFormat:
  """The layout of a ratings file.

  Attributes:
    delimiter: the field separator.
    encoding: the text encoding.
    header: the first line names the columns.
    user, item, rating: the column of each: its header name when `header`,
      else its 0-based position. `rating` None: the file has no rating
      column (implicit feedback: every row is a positive, read as the
      rating `rating_max`).
    timestamp: the timestamp column (integers, or ISO 8601 dates or
      date-times: `parsing.times`), or None. It is optional in a file:
      absent from the header, or beyond a line's last field.
    num_fields: allowed field counts of a line (no header); empty = every
      line as many as the first.
    user_id_type, item_id_type: `int` (ids must be integers) or `str`.
    integer_ratings: ratings must be whole numbers.
    rating_min, rating_max: the rating scale; other ratings are errors.
    extension: file name extension used when writing (`dat`, `csv`, ...).
    columns: a header file's columns in order: written lines append to it.
    quoting: `auto`, fields may be CSV-quoted (`delimited.read_table`);
      `none`, a `"` is text.
  """

  delimiter: str
  rating_min: float
  rating_max: float
  encoding: str = "utf-8"
  header: bool = False
  user: str | int = 0
  item: str | int = 1
  rating: str | int | None = 2
  timestamp: str | int | None = None
  num_fields: tuple[int, ...] = ()
  user_id_type: str = "int"
  item_id_type: str = "int"
  integer_ratings: bool = False
  extension: str = "csv"
  columns: tuple[str, ...] = ()
  quoting: str = "auto"

  @property
  def quoted(self) -> bool:
    """Whether a field holding the delimiter or a `"` is written CSV-quoted
    (and read back so); else nothing is, and no field may hold the
    delimiter: a delimiter of several characters, or quotes as text."""
    return len(self.delimiter) == 1 and self.quoting != "none"

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["num_fields"], d["columns"] = list(self.num_fields), list(self.columns)
    return d

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "RatingsFormat":
    d = dict(d)
    d["num_fields"] = tuple(d.get("num_fields", ()))
    d["columns"] = tuple(d.get("columns", ()))
    return cls(**d)

  def describe(self) -> str:
    cols = [f"{r}={getattr(self, r)}" for r in ROLES
            if getattr(self, r) is not None]
    return (f"{'header, ' if self.header else ''}fields separated by"
            f" {self.delimiter!r} ({', '.join(cols)}), {self.encoding}")


# `data.generic.quoting` as `delimited.read_table` takes it.
QUOTE = {"auto": "auto", "none": False}
QUOTINGS = tuple(QUOTE)

DEFAULT_FORMAT = dict(delimiter=",", header=True, user="user", item="item",
                      rating="rating", extension="csv")


def store_format(store: TaskStore) -> RatingsFormat:
  """The ratings format of `store` (DEFAULT_FORMAT when none is recorded)."""
  if "ratings_format" in store.manifest:
    return RatingsFormat.from_json(store.manifest["ratings_format"])
  lo, hi = store.rating_range
  kind = lambda ids: "int" if ids.dtype.kind in "iu" else "str"
  return RatingsFormat(rating_min=lo, rating_max=hi,
                       user_id_type=kind(store.user_ids),
                       item_id_type=kind(store.item_ids), **DEFAULT_FORMAT)


@dataclasses.dataclass
class Ratings:
  """The parsed rows of a ratings file, in file order."""

  users: np.ndarray             # external ids: int64 or str
  items: np.ndarray
  ratings: np.ndarray           # float64
  timestamps: np.ndarray | None  # int64 (`parsing.Times.stored`)
  lines: np.ndarray             # int64 1-based line numbers
  # With `bad_ids="skip"`: rows whose integer user / item id is not an
  # integer (their id reads 0), how many distinct such user ids there are,
  # and the first such problem.
  bad_users: np.ndarray | None = None
  bad_items: np.ndarray | None = None
  bad_user_ids: int = 0
  first_bad_id: InputError | None = None
  clock: str | None = None  # the timestamps' kind (`parsing.clock_of`)
  columns: tuple[str, ...] = ()  # a header file's column names
  # The times exactly, what orders the ratings (`parsing.Times.order`).
  time_order: np.ndarray | None = None


def _ids(table, index, id_type, what) -> np.ndarray:
  if id_type == "int":
    return parsing.ints(table, table.column(index), what, ids=True)
  ids = delimited.id_strings(table, index, what)
  empty = np.flatnonzero(ids == "")
  if len(empty):
    raise InputError(f"empty {what}", path=table.path,
                     line=int(table.lines[empty[0]]))
  return ids


def parse_ratings(path: str | os.PathLike, fmt: RatingsFormat, *,
                  require_timestamp: bool = False,
                  bad_ids: str = "error", delimiter_key: str = "") -> Ratings:
  """Parses a ratings file of format `fmt`.

  Args:
    bad_ids: `error`: an id that is not an integer where the dataset's ids
      are integers is an error; `skip`: such rows are marked in
      `bad_users` / `bad_items` instead (`metarec export` skips and counts
      them, as it does unknown ids).
    delimiter_key: the config key that sets `fmt.delimiter`, named where
      the file looks split on another delimiter than it uses; its section's
      `rating_min` and `rating_max` are named, with the file's own range,
      where a rating is off the scale.

  Raises:
    InputError: naming the file and line of the first problem.
  """
  path = os.fspath(path)
  table = delimited.read_table(path, delimiter=fmt.delimiter,
                               encoding=fmt.encoding, header=fmt.header,
                               num_fields=fmt.num_fields,
                               quoting=QUOTE[fmt.quoting],
                               delimiter_key=delimiter_key)
  width = table.width
  roles = [r for r in ROLES[:3] if getattr(fmt, r) is not None]
  if fmt.header:
    pos = {r: table.position(getattr(fmt, r)) for r in roles}
    if fmt.timestamp is not None and fmt.timestamp in table.header:
      pos["timestamp"] = table.position(fmt.timestamp)
  else:
    pos = {r: int(getattr(fmt, r)) for r in roles}
    need = max(pos.values()) + 1
    if width < need:  # one field: split on another delimiter than it uses
      hint = (delimited.delimiter_hint(table.column(0)[0], fmt.delimiter,
                                       f"line {int(table.lines[0])}",
                                       delimiter_key) if width == 1 else "")
      raise delimited.LayoutError(
          f"{width} field(s) separated by {fmt.delimiter!r}, expected at"
          f" least {need}{hint}", path=path,
                       line=int(table.lines[0]))
    if fmt.timestamp is not None and int(fmt.timestamp) < width:
      pos["timestamp"] = int(fmt.timestamp)
  twice = [r for r in pos if list(pos.values()).count(pos[r]) > 1]
  if twice:  # `item_col=user`: every user would rate an item of its name
    raise InputError(f"{' and '.join(twice)} are one column,"
                     f" {getattr(fmt, twice[0])!r}: name each its own",
                     path=path, line=table.header_line if fmt.header
                     else int(table.lines[0]))
  if require_timestamp and "timestamp" not in pos:
    if fmt.header:
      table.position(fmt.timestamp)  # raises, naming the header's columns
    raise delimited.LayoutError(f"no timestamp column {fmt.timestamp!r}: lines have"
                     f" {width} field(s)", path=path,
                     line=int(table.lines[0]))
  marks, first_bad = {}, None
  for role in ("user", "item"):
    values, what = table.column(pos[role]), f"{role} id"
    if getattr(fmt, f"{role}_id_type") == "int" and bad_ids == "skip":
      ids, ok = parsing.parse_int_ids(values)
      if not ok.all():
        error = parsing.not_an_integer(table, values, ok, what)
        if first_bad is None or error.line < first_bad.line:
          first_bad = error
      marks[role] = (ids, ~ok)
    else:
      marks[role] = (_ids(table, pos[role],
                          getattr(fmt, f"{role}_id_type"), what), None)
  (users, bad_users), (items, bad_items) = marks["user"], marks["item"]
  if fmt.header and users.dtype.kind == items.dtype.kind == "U":
    # Every named column, not the ids alone: a user may be called `user`.
    delimited.refuse_repeated_header(
        table, (users == table.header[pos["user"]])
        & (items == table.header[pos["item"]]), list(pos.values()))
  bad_user_ids = 0 if bad_users is None else len(
      {table.column(pos["user"])[i].strip()
       for i in np.flatnonzero(bad_users)})
  if "rating" not in pos:
    ratings = np.full(len(users), fmt.rating_max, np.float64)
  else:
    ratings = parsing.floats(table, table.column(pos["rating"]), "rating")
  bad = np.flatnonzero((ratings < fmt.rating_min) | (ratings > fmt.rating_max)
                       | (fmt.integer_ratings & (ratings != np.round(ratings))))
  if len(bad):
    i = int(bad[0])
    kind = "whole-number " if fmt.integer_ratings else ""
    value = excerpt(table.column(pos["rating"])[i].strip(), quote=False)
    keys = delimiter_key.rpartition(".")[0]  # `data.generic`
    scale = (f"; the file's ratings go from {ratings.min():g} to"
             f" {ratings.max():g} (set {keys}.rating_min and"
             f" {keys}.rating_max)" if keys else "")
    zeros = int(np.count_nonzero(ratings[bad] == 0))
    if zeros and fmt.rating_min > 0:  # (helper Q3: Book-Crossing's file)
      scale += f"; {zeros:,} are 0: " + notes.zeros_advice(keys or None)
    raise InputError(f"rating {value} is not a {kind}rating on the scale"
                     f" {fmt.rating_min:g} to {fmt.rating_max:g}"
                     + more_lines(table.lines[bad]) + scale,
                     path=path, line=int(table.lines[i]))
  timestamps = time_order = clock = None
  if "timestamp" in pos:
    column = table.column(pos["timestamp"])
    timestamps, time_order = parsing.times(table, column, "timestamp")
    clock = parsing.clock_of(column)
  return Ratings(users, items, ratings, timestamps, table.lines,
                 bad_users=bad_users, bad_items=bad_items,
                 bad_user_ids=bad_user_ids, first_bad_id=first_bad,
                 clock=clock, columns=tuple(table.header or ()),
                 time_order=time_order)


def read_ratings(path: str | os.PathLike, store: TaskStore):
  """`(user_ids, item_ids, ratings, line_numbers)` of a ratings file in
  `store`'s input format (`parse_in_format`): external ids as in the
  store, float64 ratings and the 1-based line of every row, in file order.
  """
  r = parse_in_format(path, store)
  return r.users, r.items, r.ratings, r.lines


def parse_in_format(path: str | os.PathLike, store: TaskStore,
                    **kwargs) -> Ratings:
  """`parse_ratings` of a file a run reads (eval's and export's
  `--ratings`) in `store`'s input format, which a layout error names: the
  user cannot change it, only write the file in it."""
  fmt = store_format(store)
  try:
    return parse_ratings(path, fmt, **kwargs)
  except delimited.LayoutError as e:
    raise InputError(f"{e.problem} (this run reads files laid out as its"
                     f" data: {fmt.describe()})", path=e.path,
                     line=e.line) from None


def lookup(known_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
  """The index of every id in `known_ids`, -1 for unknown ids."""
  known_ids = np.asarray(known_ids)
  ids = np.asarray(ids)
  if not len(known_ids) or not len(ids):
    return np.full(len(ids), -1, np.int64)
  if (known_ids.dtype.kind in "iu") != (ids.dtype.kind in "iu"):
    return np.full(len(ids), -1, np.int64)
  order = np.argsort(known_ids, kind="stable")
  pos = np.minimum(np.searchsorted(known_ids[order], ids), len(order) - 1)
  found = known_ids[order][pos] == ids
  return np.where(found, order[pos], -1).astype(np.int64)


def strict_indices(path: str | os.PathLike, lines: np.ndarray,
                   *lookups: tuple[np.ndarray, np.ndarray, str, str]
                   ) -> list[np.ndarray]:
  """External ids -> indices; every id must be known.

  Args:
    lookups: `(known_ids, ids, what, where)` per id column, e.g.
      `(store.user_ids, users, "user", "the dataset's user table")`.

  Raises:
    InputError: at the first line with an unknown id, counting the other
      lines with one (`errors.more_lines`).
  """
  found = [lookup(known, ids) for known, ids, _, _ in lookups]
  bad = np.zeros(len(lines), bool)
  for f in found:
    bad |= f < 0
  if bad.any():
    at = np.flatnonzero(bad)
    i = int(at[0])
    for f, (_, ids, what, where) in zip(found, lookups):
      if f[i] < 0:
        raise InputError(
            f"unknown {what} {excerpt(ids[i], quote=False)} (not in {where})"
            + more_lines(np.asarray(lines)[at], of="with an unknown id"),
            path=path, line=int(lines[i]))
  return found


def to_indices(path: str | os.PathLike, store: TaskStore, user_ids, item_ids,
               lines) -> tuple[np.ndarray, np.ndarray]:
  """External ids of a ratings file -> store indices, strictly.

  Raises:
    InputError: at the first line with a user or item the store lacks
      (counting the others).
  """
  where = f"the {store.manifest['dataset']} data"
  users, items = strict_indices(
      path, lines, (store.user_ids, user_ids, "user", where),
      (store.item_ids, item_ids, "item", where))
  return users, items


def keep_last(users: np.ndarray, items: np.ndarray,
              times: np.ndarray | None = None) -> np.ndarray:
  """Mask of the rows to keep: the last row of every (user, item) pair,
  the latest by `times` where given, then the later in the file (a
  newest-first export's first row of a pair is its newest)."""
  n = len(users)
  keys = (np.arange(n),) if times is None else (np.arange(n), times)
  order = np.lexsort((*keys, items, users))
  u, i = users[order], items[order]
  last = np.ones(n, bool)
  last[:-1] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
  keep = np.zeros(n, bool)
  keep[order[last]] = True
  return keep


def format_ratings(users, items, ratings, fmt: RatingsFormat,
                   timestamps=None) -> str:
  """The text of a ratings file of format `fmt` (ids are external ids)."""
  empty = np.full(len(users), "", dtype="U1")
  ratings = np.asarray(ratings, np.float64)
  roles = {"user": writing.quote_fields(users, fmt.delimiter, fmt.quoted),
           "item": writing.quote_fields(items, fmt.delimiter, fmt.quoted)}
  if fmt.rating is not None:
    # What a store and the server learn of a rating is its float32 value:
    # written exactly, so a logged rating reads back as the one learned.
    roles["rating"] = (np.round(ratings).astype(np.int64).astype(str)
                       if fmt.integer_ratings
                       else exact.exact_text(ratings.astype(np.float32)))
  if timestamps is not None and fmt.timestamp is not None:
    stamps = np.asarray(timestamps)
    roles["timestamp"] = (stamps.astype(str) if stamps.dtype.kind in "US"
                          else stamps.astype(np.int64).astype(str))
  if fmt.header:  # the file's header (its time column only with times)
    named = {str(getattr(fmt, r)): v for r, v in roles.items()}
    skip = None if "timestamp" in roles else fmt.timestamp
    names = [c for c in fmt.columns if c != skip] or list(named)
    columns = [named.get(c, empty) for c in names]
    head = fmt.delimiter.join(names) + "\n"
  else:
    width = max(int(getattr(fmt, r)) for r in roles) + 1
    if fmt.num_fields and width not in fmt.num_fields:
      width = min(w for w in fmt.num_fields if w >= width)
    columns = [empty] * width
    for r, values in roles.items():
      columns[int(getattr(fmt, r))] = values
    head = ""
  return head + writing.join_lines(columns, fmt.delimiter)


def write_ratings(path: str | os.PathLike, users, items, ratings,
                  store: TaskStore, timestamps=None) -> None:
  """Writes ratings (external ids) in `store`'s input format, atomically."""
  fmt = store_format(store)
  text = format_ratings(users, items, ratings, fmt, timestamps)
  atomic.write_bytes(path, text.encode(fmt.encoding))
