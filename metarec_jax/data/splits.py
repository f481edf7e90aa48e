"""The cold-start protocol's splits (MeLU, KDD 2019), for any task store.

- Users with ratings are split at random (seeded) into *existing* and *new*
  users (80/20); a seeded share of the existing users is the *validation*
  set, used to choose hyperparameters and checkpoints, never for test.
  That share is `eval.val_fraction`, or with 0 (the default) the smallest
  share from 10% to 30% that gives `AUTO_VAL_TASKS` validation tasks: a
  few dozen tasks of a small dataset are too noisy to choose with.
- Items are *existing* or *new* by the store's `item_new` flag (MovieLens:
  the release year, 1998 or later is new).
- A task is one user's ratings of one item class with `min_ratings` to
  `max_ratings` ratings; `query_size` of them, drawn at random with a fixed
  seed, are the query set, the rest the support set.
- Scenarios: W (existing users, existing items), UC (new users, existing
  items), IC (existing users, new items), UIC (new users, new items), and
  for validation `val` (validation users, existing items) and `val_new`
  (validation users, new items).
- Training sees only existing (and validation) users' ratings of existing
  items, never the query ratings of the W and `val` tasks.

Everything is a pure function of (store, seed): hashing instead of
stateful generators, vectorised numpy, no loop over users.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from metarec_jax.data import hashing
from metarec_jax.data.store import TaskStore

NO_RATINGS, EXISTING, VALIDATION, NEW = 0, 1, 2, 3

# `val_fraction` 0: enough validation users for this many tasks of existing
# items, within this range of shares of the existing users.
AUTO_VAL_TASKS = 200
AUTO_VAL_RANGE = (0.1, 0.3)
SCENARIOS = ("W", "UC", "IC", "UIC")

# (user group, item class) -> scenario
_SCENARIO_OF = {(EXISTING, 0): "W", (VALIDATION, 0): "val", (NEW, 0): "UC",
                (EXISTING, 1): "IC", (VALIDATION, 1): "val_new",
                (NEW, 1): "UIC"}


@dataclasses.dataclass(frozen=True)
class ProtocolSpec:
  """The knobs of the protocol (the `eval` config section)."""

  seed: int = 0
  new_user_fraction: float = 0.2
  val_fraction: float = 0.1  # 0: automatic (`validation_size`)
  min_ratings: int = 13
  max_ratings: int = 100
  query_size: int = 10
  max_tasks: int = 0  # per scenario, 0 = all


@dataclasses.dataclass
class TaskSet:
  """Evaluation tasks: per task a user and its support and query ratings.

  Rows of task i are `items[offsets[i]:offsets[i+1]]` (same for `ratings`
  and `is_query`).
  """

  users: np.ndarray     # int32 [N] user index
  offsets: np.ndarray   # int64 [N+1]
  items: np.ndarray     # int32 [M] item index
  ratings: np.ndarray   # float32 [M]
  is_query: np.ndarray  # bool [M]

  def __len__(self) -> int:
    return len(self.users)

  def support_sizes(self) -> np.ndarray:
    task = np.repeat(np.arange(len(self)), np.diff(self.offsets))
    return np.bincount(task[~self.is_query], minlength=len(self))

  def subset(self, index: np.ndarray) -> "TaskSet":
    index = np.asarray(index, np.int64)
    counts = np.diff(self.offsets)[index]
    rows = ragged_arange(self.offsets[index], counts)
    return TaskSet(self.users[index],
                   np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                   self.items[rows], self.ratings[rows], self.is_query[rows])


@dataclasses.dataclass
class Split:
  """The protocol applied to one store."""

  user_group: np.ndarray        # int8 [U]: NO_RATINGS/EXISTING/VALIDATION/NEW
  train_offsets: np.ndarray     # int64 [U+1] CSR into train_positions
  train_positions: np.ndarray   # int64 positions of training ratings
  scenarios: dict[str, TaskSet]
  val_fraction: float = 0.1     # the share of existing users validating

  def train_counts(self) -> np.ndarray:
    return np.diff(self.train_offsets)


def ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
  """concatenate([arange(s, s + c) for s, c in zip(starts, counts)])."""
  counts = np.asarray(counts, np.int64)
  total = int(counts.sum())
  if total == 0:
    return np.zeros(0, np.int64)
  ends = np.cumsum(counts)
  base = np.repeat(np.asarray(starts, np.int64) - (ends - counts), counts)
  return base + np.arange(total, dtype=np.int64)


def validation_size(eligible: np.ndarray, fraction: float) -> int:
  """How many of the existing users (in their seeded order; `eligible`:
  whether each has a task of existing items) validate: `fraction` of them,
  or with `fraction` 0 the fewest that give `AUTO_VAL_TASKS` tasks, within
  `AUTO_VAL_RANGE` of them."""
  n = len(eligible)
  if fraction > 0:
    return int(round(fraction * n))
  lo, hi = (int(round(f * n)) for f in AUTO_VAL_RANGE)
  enough = np.flatnonzero(np.cumsum(eligible) >= AUTO_VAL_TASKS)
  need = int(enough[0]) + 1 if len(enough) else hi
  return min(max(need, lo), hi)


def user_groups(counts: np.ndarray, spec: ProtocolSpec,
                eligible: np.ndarray | None = None) -> np.ndarray:
  """Seeded exact 80/20 (and validation) split of the users with ratings.

  `eligible` (bool per user, default all): whether a user has a task of
  existing items, which an automatic `val_fraction` counts."""
  n_users = len(counts)
  group = np.zeros(n_users, np.int8)
  rated = np.flatnonzero(counts > 0)
  order = rated[np.argsort(hashing.uniform(spec.seed, rated, 1),
                           kind="stable")]
  num_new = int(round(spec.new_user_fraction * len(rated)))
  group[order[:num_new]] = NEW
  existing = order[num_new:]
  existing = existing[np.argsort(hashing.uniform(spec.seed, existing, 2),
                                 kind="stable")]
  if eligible is None:
    eligible = np.ones(n_users, bool)
  num_val = validation_size(eligible[existing], spec.val_fraction)
  group[existing[:num_val]] = VALIDATION
  group[existing[num_val:]] = EXISTING
  return group


def make_tasks(users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
               item_new: np.ndarray, group_of_user, spec: ProtocolSpec,
               positions: np.ndarray | None = None):
  """Tasks of the protocol from rating triples sorted by user.

  Args:
    users, items, ratings: one row per rating, grouped by user.
    item_new: bool per item index.
    group_of_user: int8 per user index (the user group).
    spec: the protocol.
    positions: the rows' positions in the store (None: their row numbers).

  Returns:
    (scenario -> TaskSet, positions of the query ratings of W and val).
  """
  cls = item_new[items].astype(np.int64)
  key = users.astype(np.int64) * 2 + cls
  uniq, first, sizes = np.unique(key, return_index=True, return_counts=True)
  eligible = (sizes >= spec.min_ratings) & (sizes <= spec.max_ratings)
  g_user = (uniq // 2).astype(np.int64)
  g_cls = uniq % 2
  g_group = group_of_user[g_user]
  scenario_of_group = np.full(len(uniq), "", dtype=object)
  for (grp, c), name in _SCENARIO_OF.items():
    scenario_of_group[eligible & (g_group == grp) & (g_cls == c)] = name
  if spec.max_tasks:
    for name in set(_SCENARIO_OF.values()):
      idx = np.flatnonzero(scenario_of_group == name)
      if len(idx) > spec.max_tasks:
        drop = idx[np.argsort(hashing.uniform(spec.seed, uniq[idx], 3),
                              kind="stable")[spec.max_tasks:]]
        scenario_of_group[drop] = ""
  selected = scenario_of_group != ""
  group_id = np.searchsorted(uniq, key)
  rows = np.flatnonzero(selected[group_id])
  rows_group = group_id[rows]
  rand = hashing.uniform(spec.seed, users[rows], items[rows], 4)
  order = np.lexsort((rand, rows_group))
  rows, rows_group = rows[order], rows_group[order]
  starts = np.searchsorted(rows_group, rows_group, side="left")
  rank = np.arange(len(rows)) - starts
  is_query = rank < spec.query_size
  if positions is None:
    positions = np.arange(len(users))
  out = {}
  heldout = []
  for name in ("W", "UC", "IC", "UIC", "val", "val_new"):
    groups = np.flatnonzero(scenario_of_group == name)
    mask = np.isin(rows_group, groups)
    r, q, rg = rows[mask], is_query[mask], rows_group[mask]
    # Support rows first, then the query rows, each in item order.
    order = np.lexsort((items[r], q, rg))
    r, q, rg = r[order], q[order], rg[order]
    counts = np.bincount(np.searchsorted(groups, rg), minlength=len(groups))
    out[name] = TaskSet(
        users=g_user[groups].astype(np.int32),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        items=items[r].astype(np.int32),
        ratings=np.asarray(ratings[r], np.float32), is_query=q)
    if name in ("W", "val"):
      heldout.append(positions[r[q]])
  return out, np.concatenate(heldout) if heldout else np.zeros(0, np.int64)


def split(store: TaskStore, spec: ProtocolSpec) -> Split:
  """Applies the protocol to `store`."""
  counts = store.counts()
  user_of_rating = np.repeat(np.arange(store.num_users, dtype=np.int32),
                             counts)
  items = np.asarray(store.items)
  ratings = np.asarray(store.ratings)
  item_new = np.asarray(store.item_new)
  existing_counts = np.bincount(user_of_rating[~item_new[items]],
                                minlength=store.num_users)
  group = user_groups(counts, spec, eligible=(
      (existing_counts >= spec.min_ratings)
      & (existing_counts <= spec.max_ratings)))
  scenarios, heldout_query = make_tasks(user_of_rating, items, ratings,
                                        item_new, group, spec)
  trainable = (~item_new[items]) & np.isin(group[user_of_rating],
                                           (EXISTING, VALIDATION))
  trainable[heldout_query] = False
  train_positions = np.flatnonzero(trainable)
  train_counts = np.bincount(user_of_rating[train_positions],
                             minlength=store.num_users)
  train_offsets = np.concatenate([[0], np.cumsum(train_counts)])
  existing = np.isin(group, (EXISTING, VALIDATION)).sum()
  return Split(user_group=group, train_offsets=train_offsets.astype(np.int64),
               train_positions=train_positions.astype(np.int64),
               scenarios=scenarios,
               val_fraction=float((group == VALIDATION).sum()
                                  / max(existing, 1)))
