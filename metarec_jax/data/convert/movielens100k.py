"""MovieLens-100K (the standard `ml-100k` layout) -> task store.

Files in `data.root`:

    u.data        user \\t item \\t rating \\t timestamp
    u.user        user id | age | gender | occupation | zip code
    u.item        item id | title | release date | video release date |
                  IMDb URL | one 0/1 flag per genre of u.genre (ISO-8859-1)
    u.genre       genre | index      (the order of u.item's flags)
    u.occupation  one occupation per line (u.user's must be among them)

Store:
- users in ascending id order, also those without ratings; features `age`
  (bucketed like MovieLens-1M's: 1 = under 18, 18, 25, 35, 45, 50, 56 =
  56 and over), `gender`, `occupation`, `zip` (its first 3 characters).
- items in ascending id order; features `genre` (the flagged genres in
  u.genre order, the first `data.list_pad.genre`; the `unknown` genre is
  missing, not a category) and `year` (of the release date; missing when
  the date is).
- item classes: new when the release year is 1998 or later (MeLU).
- ratings: duplicates keep the LAST rating in file order; each user's
  ratings are in timestamp order (file order when u.data has only 3
  fields).
"""

from __future__ import annotations

import os
import re
from typing import Callable

import numpy as np

from metarec_jax import config_defaults
from metarec_jax.data.convert import delimited, features, parsing
from metarec_jax.data.convert.assemble import assemble
from metarec_jax.data.convert.ratings_io import (RatingsFormat, parse_ratings,
                                         strict_indices)
from metarec_jax.errors import InputError, excerpt

NAME = "movielens-100k"
NEW_ITEM_YEAR = 1998
AGE_BUCKETS = (1, 18, 25, 35, 45, 50, 56)
FORMAT = RatingsFormat(delimiter="\t", rating_min=1.0, rating_max=5.0,
                       encoding="utf-8", user=0, item=1, rating=2,
                       timestamp=3, num_fields=(3, 4), integer_ratings=True,
                       extension="data")
_DATE = re.compile(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$")


def age_bucket(ages: np.ndarray) -> np.ndarray:
  """MovieLens-1M's age code of each age (1, 18, 25, 35, 45, 50 or 56)."""
  edges = np.asarray(AGE_BUCKETS)
  return edges[np.maximum(np.searchsorted(edges, ages, side="right") - 1, 0)]


def _read(root, name, n, encoding="iso-8859-1"):
  return delimited.read_table(os.path.join(root, name), delimiter="|",
                              encoding=encoding,
                              num_fields=(n,) if n else ())


def _genres(root: str) -> list[str]:
  table = _read(root, "u.genre", 2)
  index = parsing.ints(table, table.column(1), "genre index")
  bad = np.flatnonzero(index != np.arange(len(index)))
  if len(bad):
    raise InputError(f"genre index {index[bad[0]]}, expected {bad[0]}"
                     " (genres must be listed in flag order)",
                     path=table.path, line=int(table.lines[bad[0]]))
  return [g.strip() for g in table.column(0)]


def _occupations(root: str) -> set[str]:
  table = _read(root, "u.occupation", 1)
  return {o.strip() for o in table.column(0)}


def _users(root: str):
  table = _read(root, "u.user", 5)
  ids = parsing.ints(table, table.column(0), "user id")
  delimited.unique_ids(table, ids, "user id")
  ages = parsing.ints(table, table.column(1), "age")
  known = _occupations(root)
  occupation = [o.strip() for o in table.column(3)]
  for i, o in enumerate(occupation):
    if o not in known:
      raise InputError(f"occupation {excerpt(o)} is not in u.occupation",
                       path=table.path, line=int(table.lines[i]))
  order = np.argsort(ids, kind="stable")
  zips = np.asarray([z.strip()[:3] for z in table.column(4)], dtype=str)
  feats = [
      features.categorical("age", "user", age_bucket(ages[order]).astype(str)),
      features.categorical("gender", "user",
                           np.asarray(table.column(2), dtype=str)[order]),
      features.categorical("occupation", "user",
                           np.asarray(occupation, dtype=str)[order]),
      features.categorical("zip", "user", zips[order]),
  ]
  return ids[order], feats


def _items(root: str, genre_names: list[str], genre_len: int):
  table = _read(root, "u.item", 5 + len(genre_names))
  ids = parsing.ints(table, table.column(0), "item id")
  delimited.unique_ids(table, ids, "item id")
  years = np.zeros(len(ids), np.int64)
  for i, date in enumerate(table.column(2)):
    date = date.strip()
    if not date:
      continue
    m = _DATE.match(date)
    if m is None:
      raise InputError(f"release date {excerpt(date)} is not like 01-Jan-1995",
                       path=table.path, line=int(table.lines[i]))
    years[i] = int(m.group(1))
  flags = np.asarray([list(table.column(j)) for j in range(5, table.width)],
                     dtype=str).T.reshape(len(table), -1)
  bad = np.argwhere((flags != "0") & (flags != "1"))
  if len(bad):
    row, col = bad[0]
    raise InputError(f"genre flag {excerpt(str(flags[row, col]))} of"
                     f" {genre_names[col]} is not 0 or 1", path=table.path,
                     line=int(table.lines[row]))
  names = np.asarray(genre_names, dtype=object)
  order = np.argsort(ids, kind="stable")
  genre_lists = [list(names[flags[i] == "1"]) for i in order]
  years = years[order]
  feats = [
      features.lists("genre", "item", genre_lists, genre_len,
                     missing=("", "unknown")),
      features.categorical("year", "item",
                           np.where(years > 0, years.astype(str), "")),
  ]
  return ids[order], years, feats


def load(root: str, out: str | os.PathLike, *, list_pad: dict | None = None,
         log_fn: Callable[[str], None] | None = None) -> dict:
  """Builds the MovieLens-100K task store of the files in `root` at `out`.

  Returns:
    The store's manifest.

  Raises:
    InputError: a missing, malformed or inconsistent file (file and line).
  """
  root = os.path.abspath(os.fspath(root))
  genre_len = int({**config_defaults.get_config().data.list_pad,
                   **(list_pad or {})}["genre"])
  user_ids, user_feats = _users(root)
  item_ids, years, item_feats = _items(root, _genres(root), genre_len)
  path = os.path.join(root, "u.data")
  r = parse_ratings(path, FORMAT)
  users, items = strict_indices(path, r.lines,
                                (user_ids, r.users, "user", "u.user"),
                                (item_ids, r.items, "item", "u.item"))
  return assemble(
      out, dataset=NAME, user_ids=user_ids, item_ids=item_ids, users=users,
      items=items, ratings=r.ratings, timestamps=r.timestamps,
      item_new=years >= NEW_ITEM_YEAR, features=user_feats + item_feats,
      fmt=FORMAT, log_fn=log_fn,
      extra={"source": {"root": root, "list_pad": {"genre": genre_len}},
             "item_class_rule": "new = the release year in u.item is"
                                f" {NEW_ITEM_YEAR} or later"})
