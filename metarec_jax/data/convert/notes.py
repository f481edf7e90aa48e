"""The notes a store records about its input files (logged as it is
built, listed by `metarec data inspect`): what is legal but most likely
not what the user meant, such as a feature column that tells nothing
apart or ids that have no row in their feature table."""

from __future__ import annotations

import os
import unicodedata

import numpy as np

from metarec_jax.data.convert import delimited, parsing
from metarec_jax.errors import InputError, excerpt


def constant_features(feats: list, rated: dict[str, np.ndarray]) -> list[str]:
  """A note for each feature column that has one value (or none: always
  missing) for every rated user or item: it tells no user or item from
  another, so it only adds parameters; usually a wrong column name or a
  column that the export of the data left empty. `feats`: `(spec, index
  of each id's value, vocabulary)` of each feature (`features`); `rated`:
  side -> the indices of the rated ids."""
  notes = []
  for spec, index, vocab in feats:
    rows = index[np.unique(rated[spec.side])]
    if len(rows) < 2 or (rows != rows[:1]).any():
      continue
    value = ("is missing" if not rows[0].any() else
             "has one value, " + excerpt(", ".join(
                 vocab[i] for i in np.atleast_1d(rows[0]) if i)) + ",")
    notes.append(f"feature column {spec.name!r} ({spec.side}) {value}"
                 f" for all {len(rows):,} rated {spec.side}s: it tells none"
                 " apart and only adds parameters (is it the column meant,"
                 " and filled?)")
  return notes


def constant_ratings(ratings: np.ndarray, column: str) -> list[str]:
  """A note where every rating has one value: a model learns nothing to
  predict from it (and scores a perfect MAE); most likely a log of clicks
  or purchases whose flag or quantity column was named the rating."""
  if len(ratings) < 2 or ratings.min() != ratings.max():
    return []
  return [f"every rating of column {column!r} is {float(ratings[0]):g}:"
          " there is nothing to predict (a log of clicks or purchases?"
          " set data.implicit.enabled=true, with an empty"
          " data.generic.rating_col where every line is a positive)"]


ZERO_SHARE = 0.2  # of ratings at 0, below which `zero_ratings` is silent


def zero_ratings(ratings: np.ndarray, column: str) -> list[str]:
  """A note where a large share of the ratings, on a scale wider than 0/1,
  is 0, the lowest: many logs write 0 for "interacted, not rated"
  (Book-Crossing's), which a rating model then learns as ratings and
  "beats" the baseline on (helper Q3: 17.5% better, 0.06 predicted for
  every book, far worse on the real ratings)."""
  if len(ratings) < 2 or ratings.min() != 0 or ratings.max() <= 1:
    return []
  share = float(np.mean(ratings == 0))
  if share < ZERO_SHARE:
    return []
  return [f"{share:.0%} of the ratings of column {column!r} are 0, the"
          f" lowest: {zeros_advice('')}"]


def zeros_advice(scale_key: str | None) -> str:
  """What to do with zeros that mean "interacted, not rated": drop them,
  or (where the file's scale can be set: `scale_key`, the section of its
  keys, "" where it already holds 0) read it as implicit feedback."""
  text = ("where 0 means interacted, not rated, it is no rating: drop those"
          " rows")
  if scale_key is None:  # (a scale of its own: MovieLens)
    return text
  return (text + ", or read the file as implicit feedback"
          + (f" with {scale_key}.rating_min=0" if scale_key else "")
          + " (data.implicit.enabled=true and a data.implicit.threshold"
          " above 0: the rows at or above it are the positives)")


def ids_and_ratings(ids: dict[str, np.ndarray], ratings: np.ndarray,
                    rating_col: str) -> list[str]:
  """`look_alike_ids` of each side's ids (side -> sorted unique ids),
  then `constant_ratings` and `zero_ratings` where `rating_col` names the
  ratings a model will predict."""
  notes = [n for side in ("user", "item")
           for n in look_alike_ids(ids[side], side)]
  return notes + (constant_ratings(ratings, rating_col)
                  + zero_ratings(ratings, rating_col) if rating_col else [])


def _spelling_key(text: str) -> str:
  """What people read in a text id: the text without invisible characters
  (zero-width spaces, byte order marks: Unicode's format characters) in
  one Unicode form (NFC: `é` as one character or as `e` and an accent).
  (An integer however written is read as its value: `look_alike_ids`.)"""
  if text.isascii():
    return text
  visible = "".join(c for c in text if unicodedata.category(c) != "Cf")
  return unicodedata.normalize("NFC", visible)


def look_alike_ids(ids: np.ndarray, side: str) -> list[str]:
  """A note where text ids (`ids`, sorted unique strings) differ only in
  how they are written (`_spelling_key`: `007` and `7`, `u3` and `u3`
  with a zero-width space): they stay different users or items, as
  written, which a file that writes them one way in places and another
  elsewhere did not mean."""
  if ids.dtype.kind in "iu" or len(ids) < 2:
    return []
  keys = np.array([_spelling_key(v) for v in ids.tolist()], dtype=object)
  # Integers however written (a sign, zeros in front): digits alone.
  maybe = np.flatnonzero(np.char.isdigit(np.char.lstrip(
      np.char.strip(ids), "+-")))
  numbers, ok = parsing.parse_ints(ids[maybe])
  keys[maybe[ok]] = numbers[ok].astype(str)
  _, group, counts = np.unique(keys.astype(str), return_inverse=True,
                               return_counts=True)
  alike = np.flatnonzero(counts[group] > 1)
  if not len(alike):
    return []
  example = ids[alike[group[alike] == group[alike[0]]]][:3].tolist()
  more = ", ..." if len(alike) > len(example) else ""
  return [f"{len(alike):,} {side} ids look like another when read"
          f" ({' and '.join(excerpt(v) for v in example)}{more}): kept as"
          f" different {side}s, as written (zeros in front, a sign,"
          " invisible characters or another Unicode form of a letter make"
          " another id)"]


# A categorical column of at least this many different numbers, one value
# in ten rows or more and not all integers, reads like a quantity (a price,
# a weight). Integers alone may be codes (zip codes, ids) as well as
# quantities: no note.
MANY_NUMBERS = 50


def numbers_as_categories(feats: list, categorical: tuple[str, ...]
                          ) -> list[str]:
  """A note for each `categorical` feature whose values are all numbers,
  not all integers, many and mostly different: as categories, a value no
  training rating saw (a new item's price) tells the model nothing, where
  its quantile bin (`data.generic.numeric`) would."""
  notes = []
  for spec, index, vocab in feats:
    values = vocab[1:]
    if (spec.name not in categorical or len(values) < MANY_NUMBERS
        or len(values) * 10 < len(index)):
      continue
    try:
      numbers = np.array([float(v) for v in values])
    except ValueError:
      continue
    if (numbers == np.round(numbers)).all():
      continue
    notes.append(f"feature column {spec.name!r} ({spec.side}) holds"
                 f" {len(values):,} different numbers: as categories, a"
                 " value seen in no training rating tells the model"
                 " nothing (name it in data.generic.numeric to read each"
                 " value as its quantile bin)")
  return notes


def cut_lists(feat, entries, missing) -> list[str]:
  """A note where rows of list feature `feat` (its `(spec, index, vocab)`)
  hold more distinct entries than it keeps (`data.list_pad.NAME`): the
  rest is dropped, and with it entries no kept row holds."""
  spec = feat[0]
  missing = set(missing)
  counts = np.fromiter((len({e.strip() for e in row} - missing)
                        for row in entries), np.int64, len(entries))
  cut = counts > spec.max_len
  if not cut.any():
    return []
  rows = (f"{int(cut.sum()):,} rows hold" if cut.sum() > 1
          else "1 row holds")
  return [f"list column {spec.name!r} ({spec.side}): {rows} more than"
          f" the {spec.max_len} entries kept (up to"
          f" {int(counts.max()):,}); the rest are dropped: raise"
          f" data.list_pad.{spec.name} to keep more"]


def unmatched(table: delimited.Table | None, rated: np.ndarray,
              rows: np.ndarray | None, ids: np.ndarray, side: str) -> str:
  """A note where ids of the ratings file (`rated`: their indices in
  `ids`) have no row in their feature `table` (`rows`: each table row's
  index in `ids`, -1 for none): their features are missing, usually ids
  written differently in the two files. Empty where every rated id has
  one, or there is no table.

  Raises:
    InputError: no rated id has a row: the table would give no rated
      user or item a feature (ids `0001` there and `1` in the ratings
      file, or `1.0`), which a note alone let pass with exit status 0.
  """
  if table is None:
    return ""
  rated = np.unique(rated)
  has_row = np.zeros(len(ids), bool)
  has_row[rows[rows >= 0]] = True
  missing = rated[~has_row[rated]]
  if not len(missing):
    return ""
  name = os.path.basename(table.path)
  if len(missing) == len(rated):
    listed = rows[rows >= 0]
    raise InputError(
        f"none of the {len(rated):,} rated {side}s has a row here (ratings:"
        f" {excerpt(str(ids[missing[0]]))}; here:"
        f" {excerpt(str(ids[listed[0]])) if len(listed) else 'no row'}):"
        " are the ids written alike (leading zeros, '1.0' for 1, case)?",
        path=table.path)
  what = (f"{len(missing):,} of the {len(rated):,} rated {side}s"
          " have no row")
  return (f"{what} in {name}: their features are missing (e.g."
          f" {excerpt(str(ids[missing[0]]))}; are the ids written as in"
          f" {name}?)")
