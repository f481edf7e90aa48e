"""Tasks of the users of a ratings file, evaluated as new users.

`metarec eval --ratings=FILE`: the file (in the dataset's own input format)
holds ratings of users of the dataset's user table; their features come
from the store, their ratings only from the file. Every one of them is a
*new* user, so the protocol (`splits.make_tasks`: a task per user and item
class with 13 to 100 ratings, a seeded query set of 10) gives the UC
(existing items) and UIC (new items) scenarios; W and IC are empty.
A (user, item) pair rated twice keeps its latest rating (by timestamp
where the file has them, then the later line), as the loaders do.

An implicit-feedback run reads the file as its store was built
(`data.implicit.convert_store`): a rating at or above the store's
threshold is a positive, the tasks are of the positives, and every line
is an interaction, which evaluation never draws as a negative.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from metarec_jax.data import implicit, splits
from metarec_jax.data.convert import ratings_io
from metarec_jax.data.store import TaskStore

log = logging.getLogger("metarec")


def new_user_tasks(store: TaskStore, path: str | os.PathLike,
                   spec: splits.ProtocolSpec) -> dict[str, splits.TaskSet]:
  """The scenarios W, UC, IC, UIC of the users of the ratings file `path`
  (`read_new_users` without the interactions)."""
  return read_new_users(store, path, spec)[0]


def read_new_users(store: TaskStore, path: str | os.PathLike,
                   spec: splits.ProtocolSpec
                   ) -> tuple[dict[str, splits.TaskSet], np.ndarray]:
  """The scenarios W, UC, IC, UIC of the users of the ratings file `path`,
  and the sorted `implicit.keys` of every (user, item) pair of the file.

  Raises:
    InputError: a malformed line, or a user or item the store lacks (file
      and line).
  """
  r = ratings_io.parse_in_format(path, store)
  users, items = ratings_io.to_indices(path, store, r.users, r.items, r.lines)
  ratings = r.ratings
  keep = np.flatnonzero(ratings_io.keep_last(users, items, r.time_order))
  keep = keep[np.argsort(users[keep], kind="stable")]  # by user, file order
  interacted = np.unique(implicit.keys(users[keep], items[keep],
                                       store.num_items))
  ratings = np.asarray(ratings, np.float64)
  if implicit.is_implicit(store):
    # Positives only, as the store holds them (rating 1.0).
    keep = keep[ratings[keep] >= float(store.manifest["implicit"]
                                       ["threshold"])]
    ratings = np.ones_like(ratings)
  group = np.full(store.num_users, splits.NEW, np.int8)
  args = (users[keep].astype(np.int32), items[keep].astype(np.int32),
          ratings[keep], np.asarray(store.item_new), group)
  scenarios, _ = splits.make_tasks(*args, spec)
  if spec.max_tasks and any(len(scenarios[n]) == spec.max_tasks
                            for n in splits.SCENARIOS):
    # The user named these users: say where the cap left some out.
    every, _ = splits.make_tasks(*args, dataclasses.replace(spec,
                                                            max_tasks=0))
    for name in splits.SCENARIOS:
      if len(every[name]) > len(scenarios[name]):
        log.warning("%s: %s evaluates %d of its %d tasks (a seeded sample:"
                    " eval.max_tasks=%d; --config.eval.max_tasks=0"
                    " evaluates every one)", path, name,
                    len(scenarios[name]), len(every[name]), spec.max_tasks)
  return {name: scenarios[name] for name in splits.SCENARIOS}, interacted
