"""Tasks of the users of a ratings file, evaluated as new users.

`metarec eval --ratings=FILE`: the file (in the dataset's own input format)
holds ratings of users of the dataset's user table; their features come
from the store, their ratings only from the file. Every one of them is a
*new* user, so the protocol (`splits.make_tasks`: a task per user and item
class with 13 to 100 ratings, a seeded query set of 10) gives the UC
(existing items) and UIC (new items) scenarios; W and IC are empty.
Duplicated (user, item) lines keep the last, as the loaders do.
"""

from __future__ import annotations

import os

import numpy as np

from metarec_jax.data import splits
from metarec_jax.data.convert import ratings_io
from metarec_jax.data.store import TaskStore


def new_user_tasks(store: TaskStore, path: str | os.PathLike,
                   spec: splits.ProtocolSpec) -> dict[str, splits.TaskSet]:
  """The scenarios W, UC, IC, UIC of the users of the ratings file `path`.

  Raises:
    InputError: a malformed line, or a user or item the store lacks (file
      and line).
  """
  user_ids, item_ids, ratings, lines = ratings_io.read_ratings(path, store)
  users, items = ratings_io.to_indices(path, store, user_ids, item_ids, lines)
  keep = np.flatnonzero(ratings_io.keep_last(users, items))
  keep = keep[np.argsort(users[keep], kind="stable")]  # by user, file order
  group = np.full(store.num_users, splits.NEW, np.int8)
  scenarios, _ = splits.make_tasks(users[keep].astype(np.int32),
                                   items[keep].astype(np.int32),
                                   ratings[keep], np.asarray(store.item_new),
                                   group, spec)
  return {name: scenarios[name] for name in splits.SCENARIOS}
