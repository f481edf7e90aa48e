"""Ids to positions, and a user's ratings as the serving API takes them.

The Python serving API (`export.load(DIR)`) takes ids as a caller holds
them: Python or numpy integers, strings, or a mix (one unknown id of
another type than the catalogue's must not make the others unknown).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from metarec_jax.data.convert import parsing


def sorted_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(the order that sorts `ids`, the sorted ids), for `lookup`."""
  order = np.argsort(ids, kind="stable")
  return order, np.asarray(ids)[order]


def lookup(order: np.ndarray | None, sorted_ids: np.ndarray,
           ids) -> np.ndarray:
  """Positions of `ids` in the array that `order` sorts into `sorted_ids`
  (None: `sorted_ids` itself); -1 for unknown ids. On an integer
  catalogue, text ids are read as the store writes integers (`"25"` is
  25; `"abc"` and `"025"` are unknown, and only they), and floats of whole
  numbers as those integers (`25.0` is 25; `25.5` and NaN are unknown)."""
  ids = np.asarray(ids)
  if not len(sorted_ids) or not ids.size:
    return np.full(ids.shape, -1, np.int64)
  if sorted_ids.dtype.kind in "iu" and ids.dtype.kind == "f":
    # A whole number is that integer id (a pandas column of integer ids
    # holding one missing value is float: 1193.0 was an unknown item).
    flat = ids.reshape(-1)
    whole = np.isfinite(flat) & (np.abs(flat) < 2.0**63)
    whole[whole] = flat[whole] == np.round(flat[whole])
    out = np.full(len(flat), -1, np.int64)
    if whole.any():
      out[whole] = lookup(order, sorted_ids, flat[whole].astype(np.int64))
    return out.reshape(ids.shape)
  if sorted_ids.dtype.kind in "iu" and ids.dtype.kind not in "iu":
    numbers, known = parsing.parse_int_ids(ids.reshape(-1).astype(str))
    out = np.full(len(numbers), -1, np.int64)
    if known.any():
      out[known] = lookup(order, sorted_ids, numbers[known])
    return out.reshape(ids.shape)
  elif sorted_ids.dtype.kind not in "iu":
    ids = ids.astype(str)
  pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
  found = pos if order is None else order[pos]
  return np.where(sorted_ids[pos] == ids, found, -1).astype(np.int64)


def rating_pairs(ratings: Iterable, *, implicit: bool
                 ) -> tuple[list[Any], np.ndarray, np.ndarray]:
  """(item ids, float64 ratings, bool bare) of `(item_id, rating)` pairs;
  with `implicit`, a bare item id is a positive (rating +inf, `bare`
  True), so only `bare` tells it from a pair whose rating is +inf.

  Raises:
    ValueError: not an iterable of pairs (on a rating export a bare id,
      which a string's characters would otherwise be read as).
  """
  if ratings is None or isinstance(ratings, (str, bytes)):
    raise ValueError("ratings must be a sequence of (item_id, rating)"
                     f" pairs, got {type(ratings).__name__}")
  items, values, bare = [], [], []
  for p in ratings:
    if isinstance(p, (tuple, list)) and len(p) == 2:
      items.append(p[0])
      values.append(p[1])
      bare.append(False)
    elif implicit and not isinstance(p, (tuple, list, dict, set)):
      items.append(p)
      values.append(np.inf)
      bare.append(True)
    else:
      raise ValueError(
          f"ratings must be (item_id, rating) pairs, got {p!r}"
          + ("" if implicit else " (bare item ids are positives of an"
             " implicit-feedback export only)"))
  try:
    return (items, np.asarray(values, np.float64).reshape(-1),
            np.asarray(bare, bool).reshape(-1))
  except (TypeError, ValueError):
    raise ValueError("ratings must be numbers") from None


def id_array(item_ids) -> np.ndarray:
  """Item ids as a flat array: a sequence or array of them, or one id.

  Raises:
    TypeError: a set, a dict or an iterator (a generator, `map`): numpy
      made one object of it, reported as an unknown item `<generator ...>`,
      and a set has no order to give the scores in.
    ValueError: an array of more than one dimension (it was flattened).
  """
  if isinstance(item_ids, (set, frozenset, dict)) or (
      iter(item_ids) is item_ids if hasattr(item_ids, "__iter__") else False):
    raise TypeError("item ids: a list or an array of them, in the order"
                    f" wanted, not a {type(item_ids).__name__}")
  ids = np.asarray(item_ids)
  if ids.ndim > 1:
    raise ValueError(f"item ids: one dimension, got an array of shape"
                     f" {ids.shape}")
  return ids.reshape(-1)
