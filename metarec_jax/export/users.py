"""The users of a ratings file: their support sets, flags and counts.

What export does with odd input (and counts in its JSON summary):

- A rating of an item not in the catalogue is skipped (`skipped_items`,
  the number of such rating lines); its user is flagged `skipped_items`.
- A user who is not in the dataset's user table (so has no user features)
  is exported with the "missing" feature index 0 and flagged
  `not_in_user_table` (`unknown_users="serve"`, the default), or left out
  and counted in `skipped_users` (`unknown_users="skip"`).
- Where the dataset's ids are integers, a rating line whose item id is not
  an integer counts as a rating of an unknown item (skipped, counted in
  `skipped_items`); a user id that is not an integer can be neither looked
  up nor stored, so its lines are left out and it is counted in
  `skipped_users`.
- A user with no rating left (every item unknown) is exported with the
  meta-parameters (adapting on an empty support set changes nothing) and
  flagged `no_ratings`.
- A user with more than `max_support` ratings is adapted on the most recent
  `max_support` of them (by timestamp when the file has timestamps, ties and
  files without them by file order: the later line is the more recent) and
  flagged `truncated`; the older ratings are still recorded as rated (never
  recommended).
- A (user, item) pair rated twice keeps its latest rating (by timestamp
  where the file has them, then the later line), as the dataset loaders
  and `metarec eval` do (`duplicate_ratings`).

Everything is vectorised numpy over all rows; nothing loops over users.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from metarec_jax.data.convert import ratings_io
from metarec_jax.export import layout

UNKNOWN_USERS = ("serve", "skip")


@dataclasses.dataclass
class Users:
  """Exported users (sorted by external id) and their known ratings.

  Rows of user u are `offsets[u]:offsets[u+1]` of `items`/`ratings`; the
  first `support_sizes[u]` of them (oldest to newest) are its support set,
  the rest its older ratings beyond `max_support`.
  """

  ids: np.ndarray            # [U] external ids, sorted
  table_index: np.ndarray    # [U] int64 row of the user table, -1 if absent
  flags: np.ndarray          # [U] uint8 layout.FLAGS bits
  offsets: np.ndarray        # [U+1] int64
  items: np.ndarray          # [R] int32 catalogue index
  ratings: np.ndarray        # [R] float32
  support_sizes: np.ndarray  # [U] int32
  counts: dict               # skipped_users, skipped_items, duplicate_ratings

  def __len__(self) -> int:
    return len(self.ids)

  def rated_counts(self) -> np.ndarray:
    return np.diff(self.offsets)


def collect(user_ids: np.ndarray, item_ids: np.ndarray, ratings: np.ndarray,
            timestamps: np.ndarray | None, *, known_users: np.ndarray,
            known_items: np.ndarray, max_support: int,
            unknown_users: str = "serve", bad_users: np.ndarray | None = None,
            bad_items: np.ndarray | None = None,
            bad_user_ids: int = 0) -> Users:
  """Groups rating rows (in file order) into the exported users.

  Args:
    user_ids, item_ids: external ids of each row.
    ratings: each row's rating.
    timestamps: each row's time (exactly: `parsing.Times.order`), or None
      (file order is time order).
    known_users: the dataset's user table (external ids).
    known_items: the catalogue (external ids); a row's item index is its
      position here.
    max_support: the most ratings a support set holds.
    unknown_users: `serve` or `skip` users missing from `known_users`.
    bad_users, bad_items: rows whose id is not an integer where the
      dataset's ids are (`ratings_io.parse_ratings(bad_ids="skip")`): such
      a row's item is unknown (skipped, counted in `skipped_items`); such
      a user can be neither looked up nor served: its rows are left out
      and its `bad_user_ids` distinct ids counted in `skipped_users`.
  """
  if unknown_users not in UNKNOWN_USERS:
    raise ValueError(f"unknown_users must be one of {UNKNOWN_USERS}")
  if max_support < 1:
    raise ValueError(f"max_support must be >= 1, got {max_support}")
  if bad_users is not None and bad_users.any():
    keep = ~bad_users
    user_ids, item_ids = np.asarray(user_ids)[keep], np.asarray(item_ids)[keep]
    ratings = np.asarray(ratings)[keep]
    timestamps = None if timestamps is None else np.asarray(timestamps)[keep]
    bad_items = None if bad_items is None else bad_items[keep]
  user_ids = np.asarray(user_ids)
  n = len(user_ids)
  ids, user = np.unique(user_ids, return_inverse=True)
  user = user.reshape(-1)
  table = ratings_io.lookup(known_users, ids)
  item = ratings_io.lookup(known_items, np.asarray(item_ids))
  if bad_items is not None:
    item[bad_items] = -1
  skipped_users = int(bad_user_ids)
  if unknown_users == "skip":
    keep_user = table >= 0
    skipped_users += int((~keep_user).sum())
    new_index = np.cumsum(keep_user) - 1
    row_kept = keep_user[user]
    ids, table = ids[keep_user], table[keep_user]
    user = np.where(row_kept, new_index[user], -1)
  else:
    row_kept = np.ones(n, bool)
  num_users = len(ids)
  unknown_item = row_kept & (item < 0)
  flags = np.zeros(num_users, np.uint8)
  flags[table < 0] |= layout.NOT_IN_USER_TABLE
  flags[np.unique(user[unknown_item])] |= layout.SKIPPED_ITEMS
  rows = np.flatnonzero(row_kept & (item >= 0))
  last = ratings_io.keep_last(
      user[rows], item[rows],
      None if timestamps is None else np.asarray(timestamps)[rows])
  duplicates = int((~last).sum())
  rows = rows[last]
  # Oldest first: by user, then timestamp, then file order.
  time = (np.asarray(timestamps)[rows] if timestamps is not None
          else np.zeros(len(rows), np.int64))
  rows = rows[np.lexsort((rows, time, user[rows]))]
  counts = np.bincount(user[rows], minlength=num_users)
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  support = np.minimum(counts, max_support)
  # Rank from the oldest; the newest `support` rows of a user are its
  # support set, moved ahead of the older ones (order kept within each).
  rank = np.arange(len(rows)) - np.repeat(offsets[:-1], counts)
  older = rank < np.repeat(counts - support, counts)
  rows = rows[np.lexsort((rank, older, user[rows]))]
  flags[counts == 0] |= layout.NO_RATINGS
  flags[counts > max_support] |= layout.TRUNCATED
  return Users(
      ids=ids, table_index=table, flags=flags, offsets=offsets,
      items=item[rows].astype(np.int32),
      ratings=np.asarray(ratings, np.float32)[rows],
      support_sizes=support.astype(np.int32),
      counts={"skipped_users": skipped_users,
              "skipped_items": int(unknown_item.sum()),
              "duplicate_ratings": duplicates})


def flag_counts(flags: np.ndarray) -> dict[str, int]:
  """How many users carry each flag."""
  return {name: int(((flags & bit) != 0).sum())
          for name, bit in layout.FLAGS.items()}
