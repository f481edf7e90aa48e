"""Negatives for implicit feedback: items a user never interacted with.

`NegativeSampler` draws a training task's negatives (`implicit` builds it
for the training users, the support sets of evaluation and serving), a
pure function of (seed, stream keys, row key), from sorted interaction
keys `user * num_items + item` (`keys`, `contains`).
"""

from __future__ import annotations

import numpy as np

from metarec_jax.data import hashing

_TRAIN_STREAM = 21  # distinct from the protocol's and `implicit`'s streams
_ROUNDS = 8  # rejection rounds before a row's own free items are listed
# Elements of one block of `NegativeSampler._fill`'s comparison (bounds its
# memory where a short row's pool is large).
_FILL_BLOCK = 1 << 24


def keys(users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
  """int64 keys `user * num_items + item` of (user, item) pairs."""
  return np.asarray(users, np.int64) * num_items + np.asarray(items, np.int64)


def contains(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
  """Whether each key of `query` is in `sorted_keys` (sorted int64)."""
  if not len(sorted_keys):
    return np.zeros(np.shape(query), bool)
  pos = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
  return sorted_keys[pos] == query


class NegativeSampler:
  """Draws items a user never interacted with, from a pool of items.

  Args:
    interacted: sorted interaction keys (`interacted_keys`).
    num_items: the store's item count.
    pool: item indices negatives are drawn from.
    weights: per pool item (popularity sampling), None = uniform.
  """

  def __init__(self, interacted: np.ndarray, num_items: int,
               pool: np.ndarray, weights: np.ndarray | None = None):
    self.interacted, self.num_items = interacted, int(num_items)
    self.pool = np.asarray(pool, np.int64)
    self.cdf = None
    if weights is not None:
      w = np.asarray(weights, np.float64)
      if w.sum() <= 0:
        w = np.ones_like(w)
      self.cdf = np.cumsum(w) / w.sum()

  def held_out(self, items: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sorted keys of the `(t, items[t, j])` pairs `mask` keeps, `t` the
    row: a batch's query positives, which the same rows' support
    negatives may be (`draw`'s `held_out`)."""
    items = np.asarray(items)
    rows = np.broadcast_to(np.arange(len(items))[:, None], items.shape)
    return np.unique(keys(rows[mask], items[mask], self.num_items))

  def _free(self, users, rows, items, held_out) -> np.ndarray:
    """Whether each of `items` (broadcast with `users` and `rows`) is one
    the user never interacted with, or one `held_out` gives its row."""
    free = ~contains(self.interacted, keys(users, items, self.num_items))
    if held_out is not None:
      free |= contains(held_out, keys(rows, items, self.num_items))
    return free

  def _candidates(self, u: np.ndarray) -> np.ndarray:
    if self.cdf is None:
      idx = np.floor(u * len(self.pool)).astype(np.int64)
    else:
      idx = np.searchsorted(self.cdf, u, side="right")
    return self.pool[np.minimum(idx, len(self.pool) - 1)]

  def draw(self, users: np.ndarray, counts: np.ndarray, width: int,
           seed: int, row_keys: np.ndarray, *stream,
           held_out: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """`counts[t]` negatives of `users[t]` (with replacement), padded.

    A pure function of (seed, stream keys, row key): the stream keys
    identify the batch (e.g. the step), `row_keys[t]` the row (its global
    slot in training, its task in evaluation), so the draws do not depend
    on how a batch is split over processes.

    `held_out`: sorted keys (`held_out`: of row `t`, not of its user, as
    a user may fill two rows) of items that row `t` may draw as
    if its user never had them: its task's query positives, when drawing
    the support's negatives. Adaptation must not know them (a server
    adapting a user knows only the past); excluded, they would make every
    support negative a true one, and on a small catalog the query's
    candidates nearly the same items, which adaptation then learns to
    push down.

    Returns:
      (items int32 [T, width], mask bool [T, width]); a slot stays masked
      only if the user interacted with every item of the pool (a row that
      `_ROUNDS` rounds of draws left short, its user having interacted
      with nearly every item, is filled from its own free items: `_fill`).
    """
    users = np.asarray(users, np.int64)
    n = len(users)
    need = np.minimum(np.asarray(counts, np.int64), width)
    out = np.zeros((n, width), np.int64)
    filled = np.zeros(n, np.int64)
    if not len(self.pool) or width == 0:
      return out.astype(np.int32), np.zeros((n, width), bool)
    rows = np.asarray(row_keys, np.int64)[:, None]
    cols = np.arange(width)[None, :]
    for r in range(_ROUNDS):
      short = need - filled
      if short.max(initial=0) <= 0:
        break
      u = hashing.uniform(seed, *stream, rows, r * width + cols,
                          _TRAIN_STREAM)
      cand = self._candidates(u)
      ok = self._free(users[:, None], np.arange(n)[:, None], cand, held_out)
      rank = np.cumsum(ok, axis=1) - 1
      take = ok & (rank < short[:, None])
      t, c = np.nonzero(take)
      out[t, filled[t] + rank[t, c]] = cand[t, c]
      filled += take.sum(1)
    short = np.flatnonzero(filled < need)
    if len(short):
      u = hashing.uniform(seed, *stream, rows[short], _ROUNDS * width + cols,
                          _TRAIN_STREAM)
      self._fill(out, filled, need, short, users, u, held_out)
    mask = cols < filled[:, None]
    return np.where(mask, out, 0).astype(np.int32), mask

  def _fill(self, out, filled, need, short, users, u, held_out) -> None:
    """Fills the slots of rows `short` that the rounds left empty (in
    place), each drawn from the row's own free items as the rounds draw
    from the pool (uniform or by the weights; uniformly where every free
    item weighs 0), with replacement.

    The rounds draw from the whole pool and keep what the user never had:
    where that is a few items (a user who clicked 49 of 50), they hit one
    too rarely, and such a row got 6 of 40 negatives in silence. Listing
    the free items costs a pool-sized row, so only these rows pay it, in
    blocks of `_FILL_BLOCK` elements."""
    weights = (np.ones(len(self.pool)) if self.cdf is None
               else np.diff(self.cdf, prepend=0.0))
    width = out.shape[1]
    block = max(1, _FILL_BLOCK // (len(self.pool) * max(width, 1)))
    for lo in range(0, len(short), block):
      t = short[lo:lo + block]
      free = self._free(users[t][:, None], t[:, None], self.pool[None, :],
                        held_out)
      w = free * weights[None, :]
      # Free items that all weigh 0 (popularity sampling, items without a
      # training positive) are drawn uniformly: they are what is left.
      w = np.where(w.sum(1, keepdims=True) > 0, w, free.astype(np.float64))
      total = w.sum(1)
      has = total > 0  # else every pool item is the user's: stays short
      cdf = np.cumsum(w, axis=1) / np.where(has, total, 1.0)[:, None]
      # The first item whose cumulative weight passes the draw (never one
      # of weight 0, whose cumulative does not rise; the last is 1 > u).
      pick = np.sum(cdf[:, None, :] <= u[lo:lo + block, :, None], axis=-1)
      pick = self.pool[np.minimum(pick, len(self.pool) - 1)]
      slot = np.arange(width)[None, :]
      gap = (has[:, None] & (slot >= filled[t][:, None])
             & (slot < need[t][:, None]))
      out[t] = np.where(gap, pick, out[t])
      filled[t] = np.where(has, need[t], filled[t])
