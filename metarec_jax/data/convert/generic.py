"""Your own interaction log -> task store (`data.name = "generic"`).

Files (paths relative to `data.root`, set in `data.generic`):

- the ratings file: one rating per line, fields separated by `delimiter`,
  with or without a header line; the user, item, rating (and optional
  timestamp: numbers, or ISO 8601 dates or date-times) columns are named
  by `user_col`, `item_col`,
  `rating_col`, `timestamp_col` (header names, or 0-based positions when
  `header` is false). Fields may be quoted CSV-style (`"a, b"`; `""` is
  a quote inside one) where the delimiter is one character.
- optional user and item feature tables: a header line, the id in the first
  column, feature columns after it (fields may be quoted CSV-style). The
  columns named in `categorical` become one-category features, those in
  `lists` list features (entries separated by `list_sep`, padded to
  `data.list_pad[name]`, or to the longest list when that has no entry)
  and those in `numeric` (numbers: a price, a year) one-category features
  of the value's quantile bin, `numeric_bins` of them over the table's
  rows; other columns are ignored. Values in `missing` are index 0.

Ids may be any strings; when every id of a side is an integer that fits
in 64 bits the store keeps them as integers (and sorts them
numerically). Users and items are the union of the ratings file and the
feature tables, in ascending id order; a user or item absent from its
feature table has missing features.

An item is new in the cold-start protocol when its `new_item_col` (an item
table column) is 1, or, with `new_item_year` > 0, when that column holds a
year (or an ISO 8601 date) of at least `new_item_year`; without
`new_item_col` no item is new (`item_classes`).
Duplicated (user, item) ratings keep the LAST one in file order; each
user's ratings stay in file order, or timestamp order when there is one.

Features: the named columns of the feature tables, plus the user and item
ids as categorical features (`user_key`, `item_key`) with `id_features`,
or when there is no feature table and no column is named (a ratings file
alone).

Implicit feedback (`data.implicit.enabled`): with `rating_col` empty the
file has no rating column and every line is a positive; otherwise ratings
at or above `data.implicit.threshold` are (see `data.implicit`). A
repeated (user, item) pair is one interaction either way.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from metarec_jax import config_defaults, config_io
from metarec_jax.data.convert import delimited, features, item_classes, parsing
from metarec_jax.data.convert import notes as input_notes
from metarec_jax.data.convert.assemble import assemble
from metarec_jax.data.convert.ratings_io import RatingsFormat, lookup, parse_ratings
from metarec_jax.data.schema import ID_KEYS
from metarec_jax.errors import InputError, excerpt

NAME = "generic"
MAX_NAME_BYTES = 250  # of a feature's name: `NAME.json` within 255 bytes


@dataclasses.dataclass(frozen=True)
class GenericSpec:
  """The `data.generic` config section."""

  ratings: str
  delimiter: str
  header: bool
  encoding: str
  user_col: str
  item_col: str
  rating_col: str
  timestamp_col: str
  rating_min: float
  rating_max: float
  user_features: str
  item_features: str
  feature_delimiter: str
  categorical: tuple[str, ...]
  lists: tuple[str, ...]
  numeric: tuple[str, ...]
  numeric_bins: int
  list_sep: str
  missing: tuple[str, ...]
  new_item_col: str
  new_item_year: int
  id_features: bool
  quoting: str


def _unescape(text: str) -> str:
  """`\\t` in a config or flag is a tab."""
  return text.replace("\\t", "\t")


def spec_of(data_config) -> GenericSpec:
  """The `GenericSpec` of a `data` config section (each value checked by
  `config_reference.validate`; a tab may be written `\\t`)."""
  spec = config_io.dataclass_of(GenericSpec, data_config.generic,
                                "data.generic")
  spec = dataclasses.replace(
      spec, delimiter=_unescape(spec.delimiter),
      feature_delimiter=_unescape(spec.feature_delimiter),
      list_sep=_unescape(spec.list_sep),
      **{key: tuple(str(v) for v in getattr(spec, key))
         for key in ("categorical", "lists", "numeric", "missing")})
  kinds = ("categorical", "lists", "numeric")
  for i, a in enumerate(kinds):
    for b in kinds[i + 1:]:
      both = set(getattr(spec, a)) & set(getattr(spec, b))
      if both:
        raise InputError(f"data.generic: {', '.join(sorted(both))} is in"
                         f" both {a} and {b}")
  return spec


def _column(spec: GenericSpec, key: str) -> str | int | None:
  value = str(getattr(spec, key))
  if key == "rating_col" and not value:
    return None  # implicit feedback: every row is a positive
  if spec.header:
    return value
  try:
    position = int(value)
  except ValueError:
    position = -1
  if position < 0:  # -4 read the 4th column from the end: item_col=-4 of
    # a 4-field file was the user column, unrefused (every user rated
    # an item named like themselves)
    raise InputError(f"data.generic.{key}={value!r}: without a header a"
                     " column is its 0-based position")
  return position


def ratings_format(spec: GenericSpec) -> RatingsFormat:
  """The format of the ratings file (ids as strings until they are seen)."""
  ext = os.path.splitext(spec.ratings)[1].lstrip(".") or "csv"
  return RatingsFormat(
      delimiter=spec.delimiter, rating_min=float(spec.rating_min),
      rating_max=float(spec.rating_max), encoding=spec.encoding,
      header=bool(spec.header), user=_column(spec, "user_col"),
      item=_column(spec, "item_col"), rating=_column(spec, "rating_col"),
      timestamp=(_column(spec, "timestamp_col") if spec.timestamp_col
                 else None),
      user_id_type="str", item_id_type="str", extension=ext,
      quoting=spec.quoting)


@dataclasses.dataclass
class _SideTable:
  """A feature table: its ids (as strings) and its parsed table."""

  side: str
  ids: np.ndarray
  table: delimited.Table


def _read_side(spec: GenericSpec, root: str, side: str) -> _SideTable | None:
  name = getattr(spec, f"{side}_features")
  if not name:
    return None
  table = delimited.read_table(
      os.path.join(root, name), delimiter=spec.feature_delimiter
      or spec.delimiter, encoding=spec.encoding, header=True,
      quoting="auto" if spec.quoting != "none" else False,  # (as ratings)
      delimiter_key="data.generic.feature_delimiter")  # not .delimiter
  _refuse_ids_not_first(table, getattr(spec, f"{side}_col"), side)
  ids = delimited.id_strings(table, 0, f"{side} id")
  empty = np.flatnonzero(ids == "")
  if len(empty):
    raise InputError(f"empty {side} id", path=table.path,
                     line=int(table.lines[empty[0]]))
  # Every column: an id may be called like the header's id column.
  delimited.refuse_repeated_header(table, ids == table.header[0],
                                   range(table.width))
  delimited.unique_ids(table, ids, f"{side} id")
  return _SideTable(side, ids, table)


def _refuse_ids_not_first(table: delimited.Table, id_col: str,
                          side: str) -> None:
  """Raises InputError where a feature table's ids are not its first
  column but a later one is named as the ratings file's id column: the
  first column was read as the ids (a maker's name repeated: "item id
  Bolt appears twice"; unique titles: every rated item without features,
  and only a note)."""
  if table.header[0] != id_col and id_col in table.header:
    raise InputError(
        f"the {side} ids must be the first column, but column"
        f" {table.header.index(id_col) + 1} is named {id_col!r} (as"
        f" data.generic.{side}_col) and the first {table.header[0]!r}: put"
        " the id column first", path=table.path, line=table.header_line)


def _typed_ids(ids: np.ndarray) -> np.ndarray:
  """Sorted unique ids: int64 when every id is a canonical integer that
  fits in 64 bits (larger ones, such as hashes, stay strings)."""
  uniq = np.unique(ids)
  lo, hi = parsing.INT64
  integer = parsing.CANONICAL_INT.fullmatch  # bound once: a call per id
  if len(uniq) and all(integer(v) and (len(v) < 19 or lo <= int(v) < hi)
                       for v in uniq.tolist()):
    return np.sort(uniq.astype(np.int64))
  return uniq


def _refuse_header_line(r, path: str) -> None:
  """Raises InputError where a file read without a header starts with a
  line of non-integer ids while every other line's ids are integers: its
  header. Without a rating column nothing else refuses it, and it became
  a user `user` who clicked an item `item`, every id a string."""
  integer = parsing.CANONICAL_INT.fullmatch
  if len(r.users) < 2 or integer(r.users[0]) or integer(r.items[0]):
    return
  if (_typed_ids(r.users[1:]).dtype.kind == "i"
      and _typed_ids(r.items[1:]).dtype.kind == "i"):
    raise InputError(f"this line ({excerpt(r.users[0])}, {excerpt(r.items[0])})"
                     " looks like a header: every other line's ids are"
                     " integers (data.generic.header=true reads it as one)",
                     path=path, line=int(r.lines[0]))


def _as_type(ids: np.ndarray, like: np.ndarray) -> np.ndarray:
  return ids.astype(np.int64) if like.dtype.kind == "i" else ids


def _features(spec, tables, index_of, sizes, list_pad, cut_notes):
  """The configured feature columns of the side tables, by side index
  (`cut_notes` gets a note per list column whose rows were cut short)."""
  out = []
  for name in (*spec.categorical, *spec.lists, *spec.numeric):
    owners = [t for t in tables if t is not None and name in
              (t.table.header[1:])]
    for t in tables:  # listed in its header, yet "in no header" was said
      if t is not None and name == t.table.header[0]:
        raise InputError(
            f"data.generic: feature column {name!r} is the id column of"
            f" {os.path.basename(t.table.path)}; for ids as features set"
            " data.generic.id_features=true", path=t.table.path,
            line=t.table.header_line)
    if not owners:
      headers = [f"{t.table.path}: {', '.join(t.table.header)}"
                 f"{t.table.hint()}" for t in tables if t is not None]
      raise InputError(
          f"data.generic: feature column {name!r} is in no feature table's"
          f" header ({' | '.join(headers) or 'no feature table is named'})")
    if len(owners) > 1:
      raise InputError(f"data.generic: feature column {name!r} is in both"
                       " the user and the item table")
    t = owners[0]
    _refuse_path_name(name, t.table)
    values = t.table.column(t.table.position(name))
    if name in spec.categorical:
      feat = features.categorical(name, t.side, values, missing=spec.missing)
    elif name in spec.numeric:
      feat = features.binned(name, t.side, _numbers(t.table, name, values,
                                                    spec.missing),
                             int(spec.numeric_bins))
    else:
      pad = list_pad.get(name)
      entries = [v.split(spec.list_sep) for v in values]
      feat = features.lists(name, t.side, entries, int(pad) if pad else None,
                            missing=spec.missing)
      if pad:  # else padded to the longest row: nothing is cut
        cut_notes.extend(input_notes.cut_lists(feat, entries, spec.missing))
    out.append(features.reindex(feat, index_of[t.side], sizes[t.side]))
  return out


def _numbers(table: delimited.Table, name: str, values,
             missing: tuple[str, ...]) -> np.ndarray:
  """A numeric feature column's values as float64, NaN where missing.

  Raises:
    InputError: naming the line of the first value that is neither missing
      nor a finite number.
  """
  text = [v.strip() for v in values]
  known = np.isin(text, list(missing), invert=True)
  numbers = parsing.floats(
      table, [v if k else "0" for v, k in zip(text, known)],
      f"numeric feature column {name!r}: value",
      hint=" (if it means missing, add it to data.generic.missing)")
  numbers[~known] = np.nan
  return numbers


def _refuse_path_name(name: str, table: delimited.Table) -> None:
  """Raises InputError where the feature column `name` cannot be a file
  name: the store keeps a feature in `item/NAME.npy` and
  `vocab/NAME.json`, so `kind/sub` failed to write (exit 1), `../ratings`
  overwrote the store's own ratings.npy and a name beyond the file
  system's 255 bytes (a survey's question as a header) failed to write."""
  if "/" in name or len(name.encode("utf-8")) > MAX_NAME_BYTES:
    raise InputError(f"feature column {excerpt(name)}: a feature's name is a"
                     " file name in the store and may hold no '/' and at"
                     f" most {MAX_NAME_BYTES} bytes (rename the column)",
                     path=table.path, line=table.header_line)


def load(spec: GenericSpec, root: str, out: str | os.PathLike, *,
         list_pad: dict | None = None,
         log_fn: Callable[[str], None] | None = None,
         ratings_predicted: bool = True) -> dict:
  """Builds the task store of a generic dataset in `root` at `out`.

  `ratings_predicted`: the ratings are what a model will predict (not
  implicit feedback's source), so a column of one value is noted.

  Returns:
    The store's manifest.

  Raises:
    InputError: a missing or malformed file, or an inconsistent config.
  """
  root = os.path.abspath(os.fspath(root))
  fmt = ratings_format(spec)
  path = os.path.join(root, spec.ratings)
  r = parse_ratings(path, fmt, require_timestamp=bool(spec.timestamp_col),
                    delimiter_key="data.generic.delimiter")
  if not spec.header:
    _refuse_header_line(r, path)
  tables = {side: _read_side(spec, root, side) for side in ("user", "item")}
  ids, index_of = {}, {}
  for side, column in (("user", r.users), ("item", r.items)):
    t = tables[side]
    ids[side] = _typed_ids(np.concatenate(
        [column] + ([t.ids] if t is not None else [])))
    if t is not None:
      index_of[side] = lookup(ids[side], _as_type(t.ids, ids[side]))
  sizes = {side: len(v) for side, v in ids.items()}
  cut_notes = []
  feats = _features(spec, tables.values(), index_of, sizes, list_pad or {},
                    cut_notes)
  stray = sorted(set(list_pad or {}) - set(spec.lists)
                 - set(config_defaults.get_config().data.list_pad))
  if stray and log_fn is not None:  # a typo, or a column not named a list
    log_fn(f"data.list_pad: {', '.join(stray)} is no list column of"
           f" data.generic.lists {tuple(spec.lists)}: ignored")
  given = [t for t in tables.values() if t is not None]
  # A ratings file alone (no feature table, no feature column) is the most
  # common log there is: its ids are all it has, so they are its features.
  # Where a feature table is given but none of its columns is named, the
  # user most likely forgot to name them: that stays an error.
  ids_only = not feats and not given and not spec.id_features
  if spec.id_features or ids_only:
    if ids_only and log_fn is not None:
      log_fn("no feature table or column is named: the user and item ids"
             " are the features (as data.generic.id_features=true)")
    for side, key in ID_KEYS.items():
      feats.append(features.categorical(key, side, ids[side].astype(str)))
  if not feats:
    columns = "; ".join(f"{os.path.basename(t.table.path)} has"
                        f" {', '.join(t.table.header[1:]) or 'only ids'}"
                        f"{t.table.hint()}" for t in given)
    raise InputError("the generic data has no feature fields: name feature"
                     " columns in data.generic.categorical,"
                     " data.generic.lists or data.generic.numeric"
                     f" ({columns}), or set"
                     " data.generic.id_features=true")
  names = [f[0].name for f in feats]
  if len(set(names)) != len(names):
    raise InputError(f"data.generic: feature names {names} are not unique")
  item_new, rule = item_classes.item_new(
      spec.new_item_col, int(spec.new_item_year),
      tables["item"] and tables["item"].table, index_of.get("item"),
      sizes["item"])
  users = lookup(ids["user"], _as_type(r.users, ids["user"]))
  items = lookup(ids["item"], _as_type(r.items, ids["item"]))
  notes = [note for side, rows in (("user", users), ("item", items))
           if (note := input_notes.unmatched(
               tables[side] and tables[side].table, rows,
               index_of.get(side), ids[side], side))]
  notes += input_notes.constant_features(feats, {"user": users,
                                                 "item": items})
  notes += input_notes.numbers_as_categories(feats, spec.categorical)
  notes += cut_notes
  notes += input_notes.ids_and_ratings(
      ids, r.ratings, spec.rating_col if ratings_predicted else "")
  for note in notes:
    if log_fn is not None:
      log_fn(note)
  fmt = dataclasses.replace(
      fmt, user_id_type="int" if ids["user"].dtype.kind == "i" else "str",
      item_id_type="int" if ids["item"].dtype.kind == "i" else "str",
      columns=r.columns)  # all of them, so the server's log appends to it
  return assemble(
      out, dataset=NAME, user_ids=ids["user"], item_ids=ids["item"],
      users=users, items=items, ratings=r.ratings, timestamps=r.timestamps,
      item_new=item_new, features=feats, fmt=fmt, log_fn=log_fn,
      time_order=r.time_order,
      extra={"source": {"root": root, "generic": {
          k: list(v) if isinstance(v, tuple) else v
          for k, v in dataclasses.asdict(spec).items()}, "list_pad": {
              k: int(v) for k, v in (list_pad or {}).items()
              if k in spec.lists}},
             "item_class_rule": rule, "notes": notes})
