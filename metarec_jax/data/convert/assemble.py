"""Parsed ratings and features -> a task store (the loaders' last step).

Shared rules, so that every dataset is stored alike:
- a (user, item) pair rated more than once keeps its LAST rating: the
  latest by timestamp where the file has them, then the later in the file
  (the manifest counts the dropped ones);
- each user's ratings are kept in file order, or by timestamp (then file
  order) when the file has timestamps;
- users without ratings stay in the store with zero ratings.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from metarec_jax.data import store as store_lib
from metarec_jax.data.convert.features import Feature
from metarec_jax.data.convert.ratings_io import RatingsFormat, keep_last

DUPLICATE_RULE = ("a (user, item) pair rated more than once keeps its last"
                  " rating: the latest by timestamp where there are"
                  " timestamps, then the later in the file")


def assemble(out: str | os.PathLike, *, dataset: str, user_ids: np.ndarray,
             item_ids: np.ndarray, users: np.ndarray, items: np.ndarray,
             ratings: np.ndarray, timestamps: np.ndarray | None,
             item_new: np.ndarray, features: list[Feature],
             fmt: RatingsFormat, extra: dict[str, Any] | None = None,
             log_fn: Callable[[str], None] | None = None,
             time_order: np.ndarray | None = None) -> dict[str, Any]:
  """Deduplicates, orders and writes the ratings as a store at `out`.

  Args:
    user_ids, item_ids: the external ids of user and item indices.
    users, items, ratings, timestamps: one row per parsed rating, in file
      order; `users` and `items` are indices.
    item_new: bool per item: the item is new in the cold-start protocol.
    features: (spec, index table, vocabulary) per feature field.
    fmt: the ratings file's format (kept for `eval --ratings`).
    time_order: the times exactly where `timestamps` are floored
      (`parsing.Times.order`), the order a user's ratings are stored in;
      None: `timestamps`'.
    extra: more manifest entries.

  Returns:
    The manifest written.
  """
  times = timestamps if time_order is None else time_order
  keep = keep_last(users, items, times)
  dropped = int(len(keep) - keep.sum())
  users, items, ratings = users[keep], items[keep], ratings[keep]
  position = np.flatnonzero(keep)
  if timestamps is not None:
    timestamps = timestamps[keep]
    exact = timestamps if time_order is None else time_order[keep]
    order = np.lexsort((position, exact, users))
  else:
    order = np.lexsort((position, users))
  users, items, ratings = users[order], items[order], ratings[order]
  if timestamps is not None:
    timestamps = timestamps[order]
  counts = np.bincount(users, minlength=len(user_ids))
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  extra = {
      "duplicates": {"rule": DUPLICATE_RULE, "dropped": dropped},
      "users_without_ratings": int((counts == 0).sum()),
      "new_items": int(np.asarray(item_new).sum()),
      "ratings_format": fmt.to_json(),
      **(extra or {}),
  }
  store_lib.write_store(
      out, dataset=dataset, user_ids=user_ids, item_ids=item_ids,
      offsets=offsets, items=items, ratings=ratings, timestamps=timestamps,
      item_new=item_new, features=features,
      rating_range=(fmt.rating_min, fmt.rating_max), extra=extra)
  if log_fn is not None:
    log_fn(f"{dataset}: wrote {len(user_ids):,} users"
           f" ({extra['users_without_ratings']:,} without ratings),"
           f" {len(item_ids):,} items, {len(ratings):,} ratings"
           f" ({dropped} duplicates dropped) to {out}")
  return store_lib.open_store(out).manifest
