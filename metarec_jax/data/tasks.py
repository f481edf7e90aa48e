"""Padded task batches: the arrays the meta-step and evaluation consume.

A batch is `{"support": rows, "query": rows}` with
`rows = {"features": {name: int32[T, n(, L)]}, "rating": f32[T, n],
"mask": bool[T, n]}`: T tasks, each padded to n rows. Padded rows have
mask False (the loss ignores them) and feature index 0.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import numpy as np

from metarec_jax.data.schema import (ID_KEYS, ITEM_ID, FeatureSpec,
                                      item_id_spec, select)
from metarec_jax.data.splits import TaskSet, ragged_arange
from metarec_jax.data.store import TaskStore


@dataclasses.dataclass
class FeatureTables:
  """The feature index tables of the fields a model reads, held in memory.

  Besides the store's fields it can provide the virtual categorical field
  `item_id` (item index + 1, 0 on padded rows; see `schema.item_id_spec`)
  for models that learn one embedding per item.
  """

  specs: tuple[FeatureSpec, ...]
  user: dict[str, np.ndarray]
  item: dict[str, np.ndarray]

  @classmethod
  def from_store(cls, store: TaskStore, names: tuple[str, ...] = (), *,
                 item_id: bool = False) -> "FeatureTables":
    """The tables of the fields `names` (all stored fields when empty).

    Args:
      store: the task store.
      names: field names; `item_id` may be among them.
      item_id: also provide `item_id` (whether or not `names` has it).
    """
    names = tuple(names)
    stored = tuple(n for n in names if n != ITEM_ID)
    if ITEM_ID in {s.name for s in store.features}:
      raise ValueError(f"the store has a feature named {ITEM_ID!r}, which is"
                       " reserved for the item index")
    # Only `item_id` asked for: no stored field (an empty selection would
    # otherwise mean all of them).
    specs = () if names and not stored else select(store.features, stored)
    item = {s.name: np.asarray(store.item_features[s.name])
            for s in specs if s.side == "item"}
    if item_id or ITEM_ID in names:
      specs += (item_id_spec(store.num_items),)
      item[ITEM_ID] = np.arange(1, store.num_items + 1, dtype=np.int32)
    return cls(specs,
               {s.name: np.asarray(store.user_features[s.name])
                for s in specs if s.side == "user"}, item)

  def unseen_ids_missing(self, seen_users: np.ndarray,
                         seen_items: np.ndarray) -> "FeatureTables":
    """These tables with the id features (`ID_KEYS`) of the users and items
    not `seen` (bool per user, per item: read by training, with training
    ratings or, on implicit data, as a negative drawn uniformly) at 0, the
    row of a missing value. Their own rows are never trained: eval scored a
    new user with its random initial row, where the server gives a user it
    does not know the missing row (up to 1.3 stars apart, helper E)."""
    tables = {"user": dict(self.user), "item": dict(self.item)}
    for side, seen in (("user", seen_users), ("item", seen_items)):
      key = ID_KEYS[side]
      if key in tables[side]:
        tables[side][key] = np.where(np.asarray(seen, bool),
                                     tables[side][key], 0)
    return FeatureTables(self.specs, tables["user"], tables["item"])

  def rows(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
           mask: np.ndarray) -> dict:
    """Feature rows for `items: int[T, n]` of `users: int[T]`."""
    items = np.where(mask, items, 0)
    features = {}
    for spec in self.specs:
      if spec.name == ITEM_ID:  # padding must be 0, not item 0's index
        features[ITEM_ID] = np.where(mask, self.item[ITEM_ID][items],
                                     0).astype(np.int32)
      elif spec.side == "item":
        # `take` along the rows, not `table[items]`: numpy's fancy indexing
        # of a list field's 2-D table is ~15x slower (3.8 against 0.23 ms
        # for a 4,096-task melu-ref batch's actors).
        features[spec.name] = np.take(self.item[spec.name], items, axis=0)
      else:
        per_task = self.user[spec.name][users]
        shape = items.shape + per_task.shape[1:]
        features[spec.name] = np.ascontiguousarray(np.broadcast_to(
            per_task[:, None], shape))
    return {"features": features,
            "rating": np.where(mask, ratings, 0).astype(np.float32),
            "mask": np.asarray(mask, bool)}


def row_shapes(specs: tuple[FeatureSpec, ...], num_tasks: int, width: int,
               sharding=None) -> dict:
  """Abstract leaves of `num_tasks` padded sets of `width` rows."""
  def leaf(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  features = {s.name: leaf((num_tasks, width, s.max_len) if s.kind == "list"
                           else (num_tasks, width), np.int32) for s in specs}
  return {"features": features, "rating": leaf((num_tasks, width), np.float32),
          "mask": leaf((num_tasks, width), np.bool_)}


def batch_shapes(specs: tuple[FeatureSpec, ...], num_tasks: int,
                 support_width: int, query_width: int, sharding=None) -> dict:
  """Abstract task batch (`jax.ShapeDtypeStruct`s) for compiling ahead."""
  return {"support": row_shapes(specs, num_tasks, support_width, sharding),
          "query": row_shapes(specs, num_tasks, query_width, sharding)}


def scatter_rows(task: np.ndarray, slot: np.ndarray, values: np.ndarray,
                 num_tasks: int, width: int, fill=0) -> np.ndarray:
  """out[task[i], slot[i]] = values[i] in a `[num_tasks, width]` array."""
  out = np.full(num_tasks * width, fill, dtype=values.dtype)
  # One flat index: half the time of numpy's two-index assignment.
  out[np.asarray(task, np.int64) * width + slot] = values
  return out.reshape(num_tasks, width)


def power_of_two(n: int) -> int:
  """The smallest power of two >= `n` (1 for `n` <= 1): a padded size, so
  that few shapes are ever compiled."""
  return 1 << max(int(n) - 1, 0).bit_length()


def bucket_widths(sizes: np.ndarray, buckets: tuple[int, ...]) -> np.ndarray:
  """The padded width of sets of `sizes` rows: the smallest bucket that
  holds each, or the size rounded up to a multiple of 16 beyond the last."""
  sizes = np.asarray(sizes, np.int64)
  edges = np.array(sorted(buckets), np.int64)
  idx = np.searchsorted(edges, sizes, side="left")
  beyond = -(-np.maximum(sizes, 1) // 16) * 16
  return np.where(idx < len(edges), edges[np.minimum(idx, len(edges) - 1)],
                  beyond)


def taskset_batch(tasks: TaskSet, index: np.ndarray, tables: FeatureTables,
                  *, num_tasks: int, support_width: int,
                  query_width: int) -> tuple[dict, dict]:
  """Pads the tasks `index` of `tasks` into one batch of `num_tasks` tasks.

  Slots beyond `len(index)` are empty tasks (every row masked).

  Returns:
    (batch, {"support": item indices [T, S], "query": item indices [T, Q]}).
  """
  index = np.asarray(index, np.int64)
  counts = np.diff(tasks.offsets)[index]
  rows = ragged_arange(tasks.offsets[index], counts)
  task = np.repeat(np.arange(len(index)), counts)
  is_q = tasks.is_query[rows]
  users = np.zeros(num_tasks, np.int64)
  users[:len(index)] = tasks.users[index]
  out, item_index = {}, {}
  for name, sel, width in (("support", ~is_q, support_width),
                           ("query", is_q, query_width)):
    t, r = task[sel], rows[sel]
    # Rank of each row within its task (rows of a task are contiguous).
    starts = np.searchsorted(t, t, side="left")
    slot = np.arange(len(t)) - starts
    if len(slot) and slot.max() >= width:
      raise ValueError(f"a task has {slot.max() + 1} {name} rows, more than"
                       f" the padded width {width}")
    items = scatter_rows(t, slot, tasks.items[r], num_tasks, width)
    ratings = scatter_rows(t, slot, tasks.ratings[r], num_tasks, width)
    mask = scatter_rows(t, slot, np.ones(len(t), bool), num_tasks, width,
                        False)
    out[name] = tables.rows(users, items, ratings, mask)
    item_index[name] = items
  return out, item_index


def taskset_batches(tasks: TaskSet, tables: FeatureTables, *,
                    batch_tasks: int, buckets: tuple[int, ...],
                    query_width: int
                    ) -> Iterator[tuple[np.ndarray, dict, dict]]:
  """All tasks of `tasks` in padded batches of `batch_tasks`, by bucket.

  Tasks are grouped by support size into `buckets`, so a batch is padded
  only to its bucket; the last batch of a bucket is filled with empty
  tasks. Yields `(task indices, batch, item indices)` (see
  `taskset_batch`); the task indices say which slots are real.
  """
  task_width = bucket_widths(tasks.support_sizes(), buckets)
  for width in np.unique(task_width):
    members = np.flatnonzero(task_width == width)
    for lo in range(0, len(members), batch_tasks):
      index = members[lo:lo + batch_tasks]
      batch, items = taskset_batch(tasks, index, tables,
                                   num_tasks=batch_tasks,
                                   support_width=int(width),
                                   query_width=query_width)
      yield index, batch, items
