"""Raw feature values -> index tables and vocabularies (for the loaders).

Index 0 is reserved (see `schema`): a missing category, list padding.
Categories get indices 1.. in sorted order (numeric order when every
category is an integer), so a store is a deterministic function of its
files.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from metarec_jax.data.schema import FeatureSpec

MISSING = "<missing>"
PAD = "<pad>"

# (spec, index array of the side's rows, vocabulary): what `write_store` takes.
Feature = tuple[FeatureSpec, np.ndarray, list[str]]


def _sorted_categories(categories: np.ndarray) -> np.ndarray:
  """Unique categories, numerically ordered when all are integers."""
  uniq = np.unique(categories)
  try:
    numbers = np.array([int(c) for c in uniq])
  except ValueError:
    return uniq
  return uniq[np.argsort(numbers, kind="stable")]


def _encode(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
  """1-based index of each value in `categories` (all values present)."""
  order = np.argsort(categories, kind="stable")
  pos = np.searchsorted(categories[order], values)
  return (order[pos] + 1).astype(np.int32)


def categorical(name: str, side: str, values: Sequence[str], *,
                missing: Iterable[str] = ("",)) -> Feature:
  """A categorical feature of one value per row; `missing` values get 0."""
  values = np.asarray([v.strip() for v in values], dtype=str)
  known = ~np.isin(values, list(missing))
  categories = _sorted_categories(values[known])
  index = np.zeros(len(values), np.int32)
  if len(categories):
    index[known] = _encode(values[known], categories)
  spec = FeatureSpec(name, side, "categorical", len(categories) + 1)
  return spec, index, [MISSING] + categories.tolist()


def lists(name: str, side: str, values: Sequence[Sequence[str]],
          max_len: int | None, *, missing: Iterable[str] = ("",)) -> Feature:
  """A list feature: per row the first `max_len` distinct known entries.

  Args:
    values: the entries of every row (already split).
    max_len: the padded length; None = the longest row (at least 1).
    missing: entries that mean "missing" and are dropped.
  """
  missing = set(missing)
  rows = []
  for entries in values:
    kept = []
    for e in entries:
      e = e.strip()
      if e not in missing and e not in kept:
        kept.append(e)
    rows.append(kept)
  if max_len is None:
    max_len = max([len(r) for r in rows] + [1])
  rows = [r[:max_len] for r in rows]
  lengths = np.fromiter(map(len, rows), np.int64, len(rows))
  flat = np.asarray([e for r in rows for e in r], dtype=str)
  categories = _sorted_categories(flat)
  index = np.zeros((len(rows), max_len), np.int32)
  if len(flat):
    owner = np.repeat(np.arange(len(rows)), lengths)
    slot = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths,
                                            lengths)
    index[owner, slot] = _encode(flat, categories)
  spec = FeatureSpec(name, side, "list", len(categories) + 1, max_len)
  return spec, index, [PAD] + categories.tolist()


def reindex(feature: Feature, rows: np.ndarray, num_rows: int) -> Feature:
  """The feature for a new row order: row `rows[i]` gets old row i; rows
  that nobody fills are missing (0)."""
  spec, index, vocab = feature
  out = np.zeros((num_rows,) + index.shape[1:], np.int32)
  out[rows] = index
  return spec, out, vocab
