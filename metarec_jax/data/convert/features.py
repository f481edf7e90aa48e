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


def binned(name: str, side: str, values: np.ndarray, bins: int) -> Feature:
  """A categorical feature of a numeric column: each value's quantile bin.

  A price or a year as a category of its own tells a new item nothing (its
  value was never trained on); its bin is shared with the trained items of
  similar values. The edges are the `bins`-quantiles of the known values
  (`values`: float, NaN where missing, which gets 0), repeated edges
  merged (a column of few distinct values gets fewer bins); bin k holds
  the values in `[edge k-1, edge k)`.
  """
  values = np.asarray(values, np.float64)
  known = ~np.isnan(values)
  edges = np.unique(np.quantile(values[known], np.linspace(0, 1, bins + 1)
                                [1:-1])) if known.any() else np.zeros(0)
  index = np.zeros(len(values), np.int32)
  index[known] = np.searchsorted(edges, values[known], side="right") + 1
  bounds = [f"{x:.6g}" for x in edges]  # `bins` >= 2: one at least if known
  labels = ([f"<{b}" for b in bounds[:1]]
            + [f"{a}..{b}" for a, b in zip(bounds, bounds[1:])]
            + [f">={b}" for b in bounds[-1:]])
  spec = FeatureSpec(name, side, "categorical", len(labels) + 1)
  return spec, index, [MISSING] + labels


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
