"""The training sampler: step -> padded batch, a pure function of (seed, step).

Each epoch visits every training user once. Users are grouped by bucket
(their support-set size, capped at `max_support`, rounded up to a bucket
width), shuffled within the bucket and cut into batches of
`tasks_per_step`; the batches of all buckets are then shuffled. A batch is
padded only to its bucket's width, so each bucket's shape is compiled once
and short users do not pay for long ones.

Within a batch each task draws its query and support ratings from the
user's training ratings by hashing (seed, step, task index, rating), so the
global batch of a step is the same whatever the number of processes or
devices, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from metarec_jax.data import hashing
from metarec_jax.data.schema import ITEM_ID
from metarec_jax.data.splits import EXISTING, Split, ragged_arange
from metarec_jax.data.tasks import FeatureTables, bucket_widths, scatter_rows
from metarec_jax.errors import InputError

SUPPORT_SAMPLING = ("max", "uniform")  # data.support_sampling


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """How training tasks are drawn.

  Attributes:
    seed: the data seed.
    tasks_per_step: tasks in a global batch.
    query_size: query ratings per training task (`data.train_query_size`,
      or else the protocol's `data.query_size`).
    max_support: support ratings per task at most.
    min_support: users need `query_size + min_support` training ratings.
    support_sampling: `max` (as many support ratings as the user has, up to
      `max_support`) or `uniform` (a uniformly drawn size between
      `min_support` and that).
    buckets: support widths batches are padded to (`max_support` is always
      one).
    item_id_dropout: share of training rows whose `item_id` feature is
      hidden (set to 0, the index of an item without an embedding), so a
      model that embeds item IDs also learns to predict from the item's
      features alone, as it must for new items.
    negatives: implicit feedback: sampled negatives per positive in the
      support and the query set (0: rating data, no negatives).
  """

  seed: int
  tasks_per_step: int
  query_size: int
  max_support: int
  min_support: int = 3
  support_sampling: str = "max"
  buckets: tuple[int, ...] = ()
  item_id_dropout: float = 0.0
  negatives: int = 0

  def padded_widths(self, width: int) -> tuple[int, int]:
    """(support, query) rows of a batch of support width `width`: the
    positives (or ratings), then `negatives` slots per positive slot."""
    grow = 1 + self.negatives
    return width * grow, self.query_size * grow

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(sorted({b for b in self.buckets if b < self.max_support}
                        | {self.max_support}))


class TrainSampler:
  """Training batches of one process (its slice of every global batch)."""

  def __init__(self, split: Split, tables: FeatureTables, store_items,
               store_ratings, spec: SamplerSpec, *, process_index: int = 0,
               process_count: int = 1, negative_sampler=None):
    if spec.support_sampling not in SUPPORT_SAMPLING:
      raise InputError("data.support_sampling must be 'max' or 'uniform',"
                       f" got {spec.support_sampling!r}")
    if spec.tasks_per_step % process_count:
      raise InputError(f"train.tasks_per_step={spec.tasks_per_step} is not"
                       f" divisible by the {process_count} processes")
    if spec.negatives and negative_sampler is None:
      raise ValueError("spec.negatives needs a negative_sampler")
    self.split, self.tables, self.spec = split, tables, spec
    self.negative_sampler = negative_sampler
    self.items, self.ratings = store_items, store_ratings
    counts = split.train_counts()
    self.users = np.flatnonzero(counts >= spec.query_size + spec.min_support)
    if not len(self.users):
      most = int(counts.max()) if len(counts) else 0
      raise InputError(
          "no training user has the"
          f" {spec.query_size + spec.min_support} training ratings a task"
          f" needs ({spec.query_size} query ratings, data.train_query_size"
          " or else data.query_size, and data.min_support); the most any"
          f" has is {most}, counting only existing items and leaving out"
          " the query ratings (data.query_size) of each training and"
          " validation user's evaluation task: "
          + ("no rating is of an existing item: is every item new (the"
             " store's new items, e.g. data.generic.new_item_col)?"
             if not most and (split.user_group == EXISTING).any() else
             "give users more ratings, or lower data.min_support,"
             " data.train_query_size or data.query_size"))
    cap = np.minimum(counts[self.users] - spec.query_size, spec.max_support)
    self.user_width = bucket_widths(cap, spec.widths)
    local = spec.tasks_per_step // process_count
    self.local = slice(process_index * local, (process_index + 1) * local)
    self.steps_per_epoch = int(sum(
        -(-np.count_nonzero(self.user_width == w) // spec.tasks_per_step)
        for w in np.unique(self.user_width)))

  @property
  def widths(self) -> tuple[int, ...]:
    """The support widths of the batches this sampler produces."""
    return tuple(int(w) for w in np.unique(self.user_width))

  @functools.lru_cache(maxsize=2)  # noqa: B019  a sampler lives as long as its run
  def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(width per batch [B], user index per batch and slot [B, T])."""
    t = self.spec.tasks_per_step
    widths, batches = [], []
    for w in np.unique(self.user_width):
      members = self.users[self.user_width == w]
      members = members[np.argsort(
          hashing.uniform(self.spec.seed, members, epoch, 5), kind="stable")]
      n = -(-len(members) // t)
      batches.append(np.resize(members, n * t).reshape(n, t))
      widths.append(np.full(n, w))
    widths, batches = np.concatenate(widths), np.concatenate(batches)
    order = np.argsort(hashing.uniform(self.spec.seed, epoch,
                                       np.arange(len(widths)), 6),
                       kind="stable")
    return widths[order], batches[order]

  def width(self, step: int) -> int:
    epoch, i = divmod(step, self.steps_per_epoch)
    return int(self._plan(epoch)[0][i])

  def batch(self, step: int) -> dict:
    """This process's slice of the global batch of `step` (numpy)."""
    spec = self.spec
    epoch, i = divmod(step, self.steps_per_epoch)
    widths, plan = self._plan(epoch)
    width = int(widths[i])
    users = plan[i, self.local]
    slot_ids = np.arange(self.local.start, self.local.stop)
    n = len(users)
    counts = self.split.train_counts()[users]
    rows = ragged_arange(self.split.train_offsets[users], counts)
    positions = np.take(self.split.train_positions, rows)
    task = np.repeat(np.arange(n), counts)
    order = hashing.shuffle_within(task, spec.seed, step, slot_ids[task],
                                   positions, 7)
    positions, task = positions[order], task[order]
    # The order keeps each task's rows together, task by task.
    rank = np.arange(len(task)) - np.repeat(np.cumsum(counts) - counts, counts)
    cap = np.minimum(counts - spec.query_size, spec.max_support)
    if spec.support_sampling == "uniform":
      low = np.minimum(spec.min_support, cap)
      draw = hashing.uniform(spec.seed, step, slot_ids, 8)
      size = low + np.floor(draw * (cap - low + 1)).astype(np.int64)
    else:
      size = cap
    q = spec.query_size
    out, held_out = {}, None
    for name, sel, offset, w in (
        ("query", rank < q, 0, q),
        ("support", (rank >= q) & (rank < q + size[task]), q, width)):
      t, p = task[sel], positions[sel]
      slot = rank[sel] - offset
      # `take` reads the memory-mapped columns faster than `column[p]`.
      items = scatter_rows(t, slot,
                           np.asarray(np.take(self.items, p), np.int32), n, w)
      ratings = scatter_rows(t, slot, np.take(self.ratings, p), n, w)
      mask = scatter_rows(t, slot, np.ones(len(t), bool), n, w, False)
      hidden = None
      if spec.item_id_dropout and ITEM_ID in self.tables.item:
        hide = hashing.uniform(spec.seed, step, slot_ids[t], p, 9)
        hidden = scatter_rows(t, slot, hide < spec.item_id_dropout, n, w,
                              False)
      if spec.negatives:
        # Implicit feedback: the positives (label 1), then their negatives
        # (label 0), drawn per global slot so any process split agrees.
        # The query's are true negatives; the support's may be the query's
        # positives, as a server adapting a user cannot know its future.
        neg, neg_mask = self.negative_sampler.draw(
            users, spec.negatives * mask.sum(1), spec.negatives * w,
            spec.seed, slot_ids, step, int(name == "support"),
            held_out=held_out)
        if name == "query":
          held_out = self.negative_sampler.held_out(items, mask)
        items = np.concatenate([items, neg], 1)
        ratings = np.concatenate([ratings, np.zeros(neg.shape, np.float32)],
                                 1)
        mask = np.concatenate([mask, neg_mask], 1)
        if hidden is not None:
          hidden = np.pad(hidden, ((0, 0), (0, neg.shape[1])))
      rows = self.tables.rows(users, items, ratings, mask)
      if hidden is not None:
        rows["features"][ITEM_ID] = np.where(hidden, 0,
                                             rows["features"][ITEM_ID])
      out[name] = rows
    return out
