"""MovieLens-1M with the MeLU item features -> task store.

Files in `data.root`:

    users.dat              UserID::Gender::Age::Occupation::Zip-code (ASCII)
    movies.dat             MovieID::Title (Year)::Genre1|Genre2|... (ISO-8859-1)
    movies_extrainfos.dat  MovieID::Title::Year::Rate::Released::Genre::
                           Director::Writer::Actors::Plot::Poster
                           (UTF-8, CRLF; the IMDb features of the MeLU paper;
                           optional, see below)
    ratings.dat            UserID::MovieID::Rating[::Timestamp]

Store:
- users: every user of users.dat in ascending UserID order, also those
  without ratings; features `gender`, `age`, `occupation`, `zip`.
- items: every movie of movies.dat in ascending MovieID order (so nDCG's
  tie-break by item id is the MovieID order); features `rate` (the MPAA
  rating), `genre`, `director`, `actor` from movies_extrainfos.dat. Lists
  are `, `-separated; a director's parenthesised note ("(co-director)") is
  dropped; `N/A` is missing (index 0), never a category; lists keep their
  first `data.list_pad[name]` distinct entries (genre 4, director 2,
  actor 4 by default). Movies without a movies_extrainfos.dat line have
  missing features; a line for a movie that movies.dat lacks is an error.
- Without movies_extrainfos.dat (the official GroupLens zip lacks it) the
  item features are `genre` (the `|` list of movies.dat) and `year` (from
  the title); the loader logs a warning and notes it in the manifest.
- item classes: an item is new when the year in its movies.dat title is
  1998 or later (MeLU's protocol).
- ratings: a (user, movie) pair rated twice keeps its LAST rating in file
  order (recorded in the manifest); each user's ratings stay in file order,
  or timestamp order when ratings.dat has the 4-field form (every line must
  have the same form). Ratings are whole stars 1 to 5; a rating of a user
  or movie missing from users.dat or movies.dat is an error.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger("metarec")

NAME = "movielens-1m"
NEW_ITEM_YEAR = 1998
MISSING = ("", "N/A")
FORMAT = RatingsFormat(delimiter="::", rating_min=1.0, rating_max=5.0,
                       encoding="utf-8", user=0, item=1, rating=2,
                       timestamp=3, num_fields=(3, 4), integer_ratings=True,
                       extension="dat")

_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_NOTE = re.compile(r"\s*\([^)]*\)")


def _path(root: str, name: str) -> str:
  return os.path.join(root, name)


def read_users(root: str):
  """users.dat -> (sorted ids, row order, table)."""
  table = delimited.read_table(_path(root, "users.dat"), delimiter="::",
                               encoding="utf-8", num_fields=(5,))
  ids = parsing.ints(table, table.column(0), "user id")
  delimited.unique_ids(table, ids, "user id")
  order = np.argsort(ids, kind="stable")
  return ids[order], order, table


def user_features(table, order) -> list[features.Feature]:
  """MovieLens' user table (gender, age, occupation, zip code) as
  categorical features, its rows taken in `order` (the store's users)."""
  cols = {name: np.asarray(table.column(i), dtype=str)[order]
          for i, name in ((1, "gender"), (2, "age"), (3, "occupation"),
                          (4, "zip"))}
  return [features.categorical(name, "user", values, missing=MISSING)
          for name, values in cols.items()]


def read_movies(root: str):
  """movies.dat -> (sorted ids, row order, title years, genre lists, table)."""
  table = delimited.read_table(_path(root, "movies.dat"), delimiter="::",
                               encoding="iso-8859-1", num_fields=(3,))
  ids = parsing.ints(table, table.column(0), "movie id")
  delimited.unique_ids(table, ids, "movie id")
  years = np.zeros(len(ids), np.int64)
  for i, title in enumerate(table.column(1)):
    m = _TITLE_YEAR.search(title)
    if m is None:
      raise InputError(f"title {excerpt(title.strip())} does not end with the"
                       " (year) the item classes need", path=table.path,
                       line=int(table.lines[i]))
    years[i] = int(m.group(1))
  order = np.argsort(ids, kind="stable")
  genres = [table.column(2)[i].split("|") for i in order]
  return ids[order], order, years[order], genres, table


def _drop_notes(field: str) -> str:
  return _NOTE.sub("", field)


def extrainfo_features(root: str, item_ids: np.ndarray,
                       list_pad: dict) -> list[features.Feature]:
  """movies_extrainfos.dat -> rate, genre, director, actor per item index."""
  table = delimited.read_table(_path(root, "movies_extrainfos.dat"),
                               delimiter="::", encoding="utf-8",
                               num_fields=(11,))
  ids = parsing.ints(table, table.column(0), "movie id")
  delimited.unique_ids(table, ids, "movie id")
  (rows,) = strict_indices(table.path, table.lines,
                           (item_ids, ids, "movie", "movies.dat"))

  def split(col, clean=lambda s: s):
    # Notes go first: one may hold the ", " that separates entries.
    return [clean(v).split(", ") for v in table.column(col)]

  made = [
      features.categorical("rate", "item", table.column(3), missing=MISSING),
      features.lists("genre", "item", split(5), list_pad["genre"],
                     missing=MISSING),
      features.lists("director", "item", split(6, _drop_notes),
                     list_pad["director"], missing=MISSING),
      features.lists("actor", "item", split(8), list_pad["actor"],
                     missing=MISSING),
  ]
  return [features.reindex(f, rows, len(item_ids)) for f in made]


def load(root: str, out: str | os.PathLike, *, list_pad: dict | None = None,
         log_fn: Callable[[str], None] | None = None) -> dict:
  """Builds the MovieLens-1M task store of the files in `root` at `out`.

  Returns:
    The store's manifest.

  Raises:
    InputError: a missing, malformed or inconsistent file (file and line).
  """
  root = os.path.abspath(os.fspath(root))
  pad = {**config_defaults.get_config().data.list_pad, **(list_pad or {})}
  user_ids, user_order, user_table = read_users(root)
  item_ids, _, years, genres, _ = read_movies(root)
  notes = []
  if os.path.exists(_path(root, "movies_extrainfos.dat")):
    item_feats = extrainfo_features(root, item_ids, pad)
    item_source, lists = "movies_extrainfos.dat", ("genre", "director",
                                                    "actor")
  else:
    note = (f"movies_extrainfos.dat is not in {root}: the item features are"
            " the genres and year of movies.dat, not MeLU's IMDb features"
            " (rate, genre, director, actor)")
    log.warning(note)
    notes.append(note)
    item_feats = [
        features.lists("genre", "item", genres, pad["genre"],
                       missing=MISSING),
        features.categorical("year", "item", years.astype(str)),
    ]
    item_source, lists = "movies.dat", ("genre",)
  r = parse_ratings(_path(root, "ratings.dat"), FORMAT)
  users, items = strict_indices(
      _path(root, "ratings.dat"), r.lines,
      (user_ids, r.users, "user", "users.dat"),
      (item_ids, r.items, "movie", "movies.dat"))
  return assemble(
      out, dataset=NAME, user_ids=user_ids, item_ids=item_ids, users=users,
      items=items, ratings=r.ratings, timestamps=r.timestamps,
      item_new=years >= NEW_ITEM_YEAR,
      features=user_features(user_table, user_order) + item_feats,
      fmt=FORMAT, log_fn=log_fn,
      extra={"source": {"root": root, "item_features": item_source,
                        "list_pad": {k: int(pad[k]) for k in lists}},
             "item_class_rule": "new = the year in the movies.dat title is"
                                f" {NEW_ITEM_YEAR} or later",
             "notes": notes})
