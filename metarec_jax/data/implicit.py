"""Implicit feedback: positives only, and negatives drawn per task.

An implicit store holds only a user's *positives* (rating 1.0): every row of
an interaction file without a rating column, or the ratings at or above
`data.implicit.threshold` (MovieLens: >= 4 stars). A (user, item) pair that
occurs more than once is one interaction (the rating store's duplicate rule
picks its rating first: the latest by timestamp, the later line where
timestamps tie or are absent). Beside the positives
it keeps `interacted.npy`: the sorted keys `user * num_items + item` of
EVERY interaction, positive or not, so that negatives are drawn only from
items the user never interacted with.

The protocol (splits.py) then runs unchanged on the positives: a task is a
user's positives of one item class, kept with 13 to 100 of them, 10 held
out as the query. Negatives are drawn per task, not stored:

- training (`NegativeSampler`): `data.implicit.negatives` per positive, for
  the support and the query set, uniform or popularity-weighted over the
  training items, with replacement, a pure function of (seed, step, slot);
  a support's may be the task's query positives (`held_out`), as in
  evaluation: adaptation must not know the query;
- evaluation (`eval_candidates`): `data.implicit.eval_negatives` per
  held-out positive, uniform without replacement over the task's item class.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np

from metarec_jax import config_io
from metarec_jax.errors import InputError
from metarec_jax.data import hashing
from metarec_jax.data import store as store_lib
# Re-exported: `implicit.keys`, `implicit.contains`, `implicit.NegativeSampler`.
from metarec_jax.data.negatives import NegativeSampler, contains, keys

SAMPLING = ("uniform", "popularity")
INTERACTED = "interacted.npy"
# Hash streams distinct from the protocol's and the sampler's.
# (`negatives` draws the training stream, 21.)
_SUPPORT_STREAM, _EVAL_STREAM, _EXPORT_STREAM = 22, 23, 25


@dataclasses.dataclass(frozen=True)
class ImplicitSpec:
  """The `data.implicit` config section.

  Attributes:
    enabled: the data is implicit feedback (positives only).
    threshold: ratings >= threshold are positives (0: every row is one;
      a ratings file without a rating column has only positives).
    negatives: negatives per positive in training tasks (support and query)
      and in the support sets of evaluation tasks.
    sampling: `uniform` or `popularity` (weighted by the training
      positives' counts) for the training negatives.
    eval_negatives: sampled evaluation: negatives per held-out positive.
  """

  enabled: bool
  threshold: float
  negatives: int
  sampling: str
  eval_negatives: int


def spec_of(data_config) -> ImplicitSpec:
  """The `ImplicitSpec` of a `data` config section (its values checked by
  `config_reference.validate`)."""
  return config_io.dataclass_of(ImplicitSpec, data_config.implicit,
                                "data.implicit")


def is_implicit(store: store_lib.TaskStore) -> bool:
  """Whether `store` holds implicit feedback (its manifest says so)."""
  return bool(store.manifest.get("implicit"))


def convert_store(src: store_lib.TaskStore, out: str | os.PathLike, *,
                  threshold: float, notes: list[str] = ()) -> dict:
  """Writes the implicit store of the rating store `src` at `out`.

  Rows with rating >= `threshold` become positives (rating 1.0, each user's
  order kept); every row is an interaction. `notes` join the store's notes
  (`data inspect` lists them).

  Returns:
    The new store's manifest.
  """
  counts = src.counts()
  users = np.repeat(np.arange(src.num_users, dtype=np.int64), counts)
  items = np.asarray(src.items)
  positive = np.asarray(src.ratings) >= threshold
  interacted = np.unique(keys(users, items, src.num_items))
  pos_counts = np.bincount(users[positive], minlength=src.num_users)
  with store_lib.StoreWriter(out) as w:
    for name in ("user_ids.npy", "item_ids.npy", "item_new.npy"):
      shutil.copy(os.path.join(src.path, name), os.path.join(w.tmp, name))
    for side in ("user", "item", "vocab"):
      for name in os.listdir(os.path.join(src.path, side)):
        shutil.copy(os.path.join(src.path, side, name),
                    os.path.join(w.tmp, side, name))
    w.save_array("offsets.npy", np.concatenate([[0], np.cumsum(pos_counts)]
                                         ).astype(np.int64))
    w.save_array("items.npy", items[positive].astype(np.int32))
    w.save_array("ratings.npy", np.ones(int(positive.sum()), np.float32))
    if src.timestamps is not None:
      w.save_array("timestamps.npy", np.asarray(src.timestamps)[positive])
    w.save_array(INTERACTED, interacted)
    manifest = {k: v for k, v in src.manifest.items() if k != "format"}
    # rating_min/max stay the input's scale: export and serving read
    # ratings on it and compare them with the threshold.
    manifest.update(
        notes=list(src.manifest.get("notes", [])) + list(notes),
        num_ratings=int(positive.sum()), rating_mean=1.0,
        implicit={"threshold": float(threshold),
                  "positives": int(positive.sum()),
                  "interactions": int(len(interacted)),
                  "rule": "a rating >= threshold is a positive; a (user,"
                          " item) pair counts once; negatives are drawn from"
                          " the items a user never interacted with"})
    w.finish(manifest)
  return store_lib.open_store(out).manifest


def interacted_keys(store: store_lib.TaskStore) -> np.ndarray:
  """Sorted keys of every interaction of an implicit store."""
  if store.interacted is not None:
    return np.asarray(store.interacted)
  users = np.repeat(np.arange(store.num_users, dtype=np.int64),
                    store.counts())
  return np.unique(keys(users, store.items, store.num_items))


def item_pools(store: store_lib.TaskStore) -> list[np.ndarray]:
  """Item indices of each item class: [existing items, new items]."""
  new = np.asarray(store.item_new)
  return [np.flatnonzero(~new), np.flatnonzero(new)]


def train_popularity(store: store_lib.TaskStore, split) -> np.ndarray:
  """Positives per item among the training rows of `split` (int64 [I])."""
  return np.bincount(np.asarray(store.items)[split.train_positions],
                     minlength=store.num_items)


def training_sampler(store: store_lib.TaskStore, split, sampling: str,
                     interacted: np.ndarray | None = None
                     ) -> NegativeSampler:
  """The negative sampler of training tasks: the existing items (the only
  ones training sees), uniform or weighted by training popularity."""
  pool = item_pools(store)[0]
  weights = (train_popularity(store, split)[pool]
             if sampling == "popularity" else None)
  if interacted is None:
    interacted = interacted_keys(store)
  _refuse_without_negatives(store, split, pool, interacted)
  return NegativeSampler(interacted, store.num_items, pool, weights)


def _refuse_without_negatives(store: store_lib.TaskStore, split,
                              pool: np.ndarray,
                              interacted: np.ndarray) -> None:
  """InputError where no training user has an existing item they never
  interacted with: there is no negative to contrast a positive with, and
  a ranking loss would learn nothing while every ranking metric read 1 (a
  shop file where every customer bought every product)."""
  num_items = store.num_items
  users = np.flatnonzero(split.train_counts() > 0)
  in_pool = np.zeros(num_items, bool)
  in_pool[pool] = True
  seen = interacted[in_pool[interacted % num_items]] // num_items
  free = len(pool) - np.bincount(seen, minlength=store.num_users)[users]
  if len(users) and not (free > 0).any():
    raise InputError(
        f"implicit feedback: each of the {len(users):,} training users"
        f" interacted with every one of the {len(pool):,} existing items,"
        " so no negative can be drawn and a ranking loss has nothing to"
        " learn: the data needs items a user has not interacted with")


def eval_candidates(interacted: np.ndarray, num_items: int,
                    users: np.ndarray, pools: list[np.ndarray],
                    classes: np.ndarray, counts: np.ndarray, seed: int
                    ) -> np.ndarray:
  """Sampled evaluation candidates: `counts[t]` distinct items per task.

  Drawn uniformly without replacement from `pools[classes[t]]` minus the
  items user `users[t]` interacted with (fewer when fewer are left): the
  items with the smallest hash of (seed, user, item).

  Returns:
    bool [T, num_items]: the negatives drawn for each task.
  """
  n = len(users)
  out = np.zeros((n, num_items), bool)
  for c, pool in enumerate(pools):
    tasks = np.flatnonzero(classes == c)
    if not len(tasks) or not len(pool):
      continue
    u = np.asarray(users, np.int64)[tasks][:, None]
    key = hashing.uniform(seed, u, pool[None, :], _EVAL_STREAM)
    seen = contains(interacted, keys(u, pool[None, :], num_items))
    key = np.where(seen, np.inf, key)
    rank = np.argsort(np.argsort(key, axis=1, kind="stable"), axis=1)
    pick = (rank < np.asarray(counts)[tasks][:, None]) & ~seen
    rows, cols = np.nonzero(pick)
    out[tasks[rows], pool[cols]] = True
  return out


def support_negatives(sampler: NegativeSampler, users: np.ndarray,
                      classes: np.ndarray, mask: np.ndarray, negatives: int,
                      seed: int, held_out: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Negatives for evaluation support sets (`mask [T, W]` of positives):
  `negatives` per positive, a pure function of (seed, user, item class);
  `held_out`: the tasks' query positives (`NegativeSampler.held_out` of
  these rows)."""
  users = np.asarray(users, np.int64)
  return sampler.draw(users, negatives * mask.sum(1),
                      negatives * mask.shape[1], seed,
                      users * 2 + np.asarray(classes, np.int64),
                      _SUPPORT_STREAM, held_out=held_out)



def support_keys(items: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """int64 `[C]`: a key of each row's set of support items (`[C, W]`, the
  rows `mask` keeps), whatever their order: the row key of serving-time
  negatives, so that a user's draws follow its support, never its place
  in a batch, and two users' draws differ where their supports do."""
  hashed = hashing.hash64(_EXPORT_STREAM, np.asarray(items, np.int64))
  with np.errstate(over="ignore"):
    return np.sum(np.where(mask, hashed, np.uint64(0)), axis=1,
                  dtype=np.uint64).view(np.int64)


def labelled_support(items: np.ndarray, ratings: np.ndarray,
                     mask: np.ndarray, rated: np.ndarray, *,
                     spec: ImplicitSpec, pool: np.ndarray, num_items: int,
                     row_keys: np.ndarray, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Support rows of users outside the store (export, serving).

  A row is a positive (label 1) when its rating is >= `spec.threshold`,
  else a known negative (label 0); after the rows come `spec.negatives`
  sampled negatives per positive from `pool`, never an item of the user's
  `rated` items (`[C, R]`, -1 = padding), a pure function of (seed, row
  key).

  Returns:
    (items int [C, W'], labels f32 [C, W'], mask bool [C, W']).
  """
  items = np.asarray(items)
  n, width = items.shape
  labels = ((np.asarray(ratings) >= spec.threshold) & mask).astype(
      np.float32)
  slots = np.broadcast_to(np.arange(n)[:, None], rated.shape)
  seen = np.unique(keys(slots[rated >= 0], rated[rated >= 0], num_items))
  sampler = NegativeSampler(seen, num_items, pool)
  neg, neg_mask = sampler.draw(np.arange(n), spec.negatives * labels.sum(1),
                               spec.negatives * width, seed, row_keys,
                               _EXPORT_STREAM)
  return (np.concatenate([items, neg], 1),
          np.concatenate([labels, np.zeros(neg.shape, np.float32)], 1),
          np.concatenate([mask, neg_mask], 1))
