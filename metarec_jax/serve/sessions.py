"""The users taught at serving time, with their adapted leaves bounded.

A session is a user's known ratings (kept for the life of the server: 12
bytes a rating, what the interaction log holds too) and the leaves adapted
on them (5 KB to 80 KB a user, by model). The leaves are a cache: at most
`capacity` users hold theirs, the least recently served lose them first,
and a user asked for again is re-adapted on its ratings by the same rules
(`Engine`), so memory stays bounded however many users ever interacted.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Iterable, Sequence

import numpy as np

from metarec_jax.errors import diverges
from metarec_jax.export import users as users_lib
from metarec_jax.serve.sizes import bucket

log = logging.getLogger("metarec")


@dataclasses.dataclass
class Session:
  """A user taught at serving time."""

  items: np.ndarray    # int64 catalogue positions, oldest first, unique
  ratings: np.ndarray  # float32
  fast: dict[str, np.ndarray] | None  # None: dropped (`Sessions`)
  support_size: int    # ratings `fast` was adapted on
  source: str = "adapted"  # or, where adaptation diverged, what it serves
  adapted_once: bool = True  # False: kept unadapted (a start's replay)
  # Whether its ratings shaped `fast` (`export.UserModel.personal`); None
  # until first adapted.
  personal: bool | None = None


@dataclasses.dataclass
class Served:
  """What a request needs of one user."""

  source: str  # export, meta or adapted (export.UserModel's sources)
  fast: dict[str, np.ndarray]
  features: dict[str, np.ndarray]
  rated: np.ndarray  # catalogue positions never to recommend
  personal: bool  # its own ratings shaped `fast` (UserModel.personal)


class Sessions:
  """user -> `Session`, at most `capacity` of them holding their leaves."""

  def __init__(self, capacity: int):
    if capacity < 1:
      raise ValueError(f"capacity must be at least 1, got {capacity}")
    self.capacity = capacity
    self._all: dict[Any, Session] = {}
    self._held: collections.OrderedDict[Any, None] = collections.OrderedDict()

  def __contains__(self, user) -> bool:
    return user in self._all

  def __len__(self) -> int:
    return len(self._all)

  def __getitem__(self, user) -> Session:
    return self._all[user]

  def get(self, user) -> Session | None:
    """The user's session (its leaves possibly dropped), or None."""
    return self._all.get(user)

  @property
  def held(self) -> int:
    """Sessions holding their leaves."""
    return len(self._held)

  def dropped(self, users: Iterable) -> list:
    """Those of `users` (once each) whose session dropped its leaves."""
    return [u for u in dict.fromkeys(users)
            if u in self._all and self._all[u].fast is None]

  def touch(self, user) -> None:
    """Marks a held session as just served (the last to be dropped)."""
    if user in self._held:
      self._held.move_to_end(user)

  def update(self, pairs: Iterable[tuple[Any, Session]]) -> None:
    """Stores sessions with their leaves, dropping the leaves of the least
    recently served beyond `capacity` (the `Session` objects given keep
    theirs: a batch larger than `capacity` is served from them)."""
    for user, session in pairs:
      self._all[user] = session
      if session.fast is None:  # kept without them (`from_histories`)
        self._held.pop(user, None)
        continue
      self._held[user] = None
      self._held.move_to_end(user)
    while len(self._held) > self.capacity:
      user, _ = self._held.popitem(last=False)
      # A copy without them: a caller may still serve the stored one.
      self._all[user] = dataclasses.replace(self._all[user], fast=None)


def from_histories(histories: list[tuple[np.ndarray, np.ndarray]], *,
                   num_items: int, max_support: int):
  """`(users_lib.collect` of `histories`, each user's `Session` without
  leaves)`: a history is a user's `(catalogue positions, ratings)`, oldest
  first; collected by the export's rules (one rating per item, the latest;
  the newest `max_support` the support set), the session's items oldest
  first again."""
  n = len(histories)
  owner = np.repeat(np.arange(n), [len(h[0]) for h in histories])
  u = users_lib.collect(
      owner, np.concatenate([h[0] for h in histories]),
      np.concatenate([h[1] for h in histories]), None,
      known_users=np.zeros(0, np.int64), known_items=np.arange(num_items),
      max_support=max_support)
  assert len(u) == n, "every history holds a rating"
  out = []
  for j in range(n):
    lo, hi = int(u.offsets[j]), int(u.offsets[j + 1])
    s = int(u.support_sizes[j])
    order = np.r_[lo + s:hi, lo:lo + s]  # the support came first
    out.append(Session(items=u.items[order].astype(np.int64),
                       ratings=u.ratings[order], fast=None, support_size=s,
                       adapted_once=False))
  return u, out


def padded_support(u, size: int, width: int):
  """`(items, ratings, mask [size, width], rated [size, R])`: the support
  sets of `from_histories`'s `u`, padded to `size` users (the padding
  repeats the first) and `width` rows, and every rated item, not only the
  support's (-1: padding): an implicit export samples its negatives among
  the others (as export and `Export.adapt` do)."""
  items = np.zeros((size, width), np.int64)
  ratings = np.zeros((size, width), np.float32)
  mask = np.zeros((size, width), bool)
  counts = np.diff(u.offsets)
  rated = np.full((size, int(counts.max())), -1, np.int64)
  for i in range(size):
    j = i if i < len(u) else 0
    lo, s = int(u.offsets[j]), int(u.support_sizes[j])
    items[i, :s] = u.items[lo:lo + s]
    ratings[i, :s] = u.ratings[lo:lo + s]
    mask[i, :s] = True
    rated[i, :counts[j]] = u.items[lo:lo + counts[j]]
  return items, ratings, mask, rated


def stack_padded(rows: list[dict[str, np.ndarray]],
                 size: int) -> dict[str, np.ndarray]:
  """Each key's arrays of `rows` stacked, padded to `size` rows by
  repeating the first row (whose outputs the caller drops)."""
  rows = rows + [rows[0]] * (size - len(rows))
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def adapt(export, features: list[dict], histories: list[tuple],
          fallbacks: list[tuple], names: Sequence[str] | None, *,
          user_sizes: tuple[int, ...], support_widths: tuple[int, ...]
          ) -> list[Session]:
  """Sessions of users adapted on their histories in one device call of
  `export` (`from_histories`, padded to a size of `user_sizes` and a
  width of `support_widths`); a user whose adaptation is not finite gets
  its `fallbacks` entry (`Engine._unadapted`: source, leaves, support
  size, personal) instead, with a warning naming it as `names` does
  (None or a None name: none, as of the warm-up's made-up histories)."""
  n = len(histories)
  u, sessions = from_histories(histories, num_items=export.num_items,
                               max_support=export.max_support)
  size = bucket(n, user_sizes)
  width = bucket(int(u.support_sizes.max()), support_widths)
  fast, finite, counts = export.adapt_users(export.support_batch(
      stack_padded(features, size), *padded_support(u, size, width)))
  for j, session in enumerate(sessions):
    s = session.support_size
    # A copy: a view would keep the whole padded batch's buffer alive
    # for as long as the session (17.8 KB a session instead of 7.2).
    session.fast = {p: np.array(v[j]) for p, v in fast.items()}
    session.adapted_once = True
    session.personal = bool(counts[j])
    if not finite[j]:
      (session.source, session.fast, session.support_size,
       session.personal) = fallbacks[j]
      if names is not None and names[j] is not None:
        log.warning(
            "%s: adapting on %d ratings gives predictions that are not"
            " finite (%s); serving the %s model instead", names[j], s,
            diverges(export.meta_config), session.source)
  return sessions
