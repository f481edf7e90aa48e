"""The served models: an export plus what clients taught it since.

`Engine` answers batches of requests with one device call each (the
batched entry points of `export.Export`), padding every size to a bucket
compiled by `warm_up`, so that no request waits for a compile:

- users per call: powers of two up to `Limits.max_batch`;
- items per predict request: powers of four from 16 up to `max_items`;
- support-set width: the export's buckets (`data.buckets`), doubling
  beyond the last (`sizes.support_widths`);
- `k`: one program ranks the top `max_k`; a request takes its first `k`.

Rankings of users whose model has not changed are kept (`rankings`), and
preloaded from the export's `topk.jsonl` when it has one.

A user with interactions has a `Session`: its known ratings (the export's,
then the new ones, oldest first, one per item) and the leaves adapted on
the newest `max_support` of them, by the export's own rules
(`export.users.collect`), re-adapted when asked for after `sessions`
dropped them. Its recommendations exclude every rated item. Where that
adaptation is not finite (the inner loop diverges on these ratings:
`export.compute.support_finite`, the check `metarec export` refuses on),
the session keeps the ratings but serves the user's model before any
interaction (the export's, or the meta-parameters' for a user the export
does not have; the same after a restart), says so with a warning and
`adapted: false`, and tries again at the next interaction. A user whose
every rating the model leaves out (`Recommender.counts`) is adapted to the
model of a user without ratings: `personal: false`.

Not thread-safe: the server calls it from one worker thread.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from metarec_jax.data.convert import parsing
from metarec_jax.export import layout
from metarec_jax.export.serving import Export
from metarec_jax.serve import rankings
from metarec_jax.serve import sessions as sessions_lib
from metarec_jax.serve.sessions import Served, Session, Sessions
from metarec_jax.serve.sizes import Limits, bucket, powers, support_widths

log = logging.getLogger("metarec")


class Engine:
  """Batches of recommend / predict / learn / adapt requests (see module)."""

  def __init__(self, export: Export, limits: Limits = Limits(), *,
               rank_cache: int = 100_000, adapted_cache: int = 10_000):
    self.export = export
    self.limits = limits
    self.sessions = Sessions(adapted_cache)
    self.rankings = rankings.RankCache(rank_cache)
    self.user_sizes = powers(1, 2, limits.max_batch)
    self.item_sizes = powers(16, 4, limits.max_items)
    self.k = min(limits.max_k, export.num_items)
    self.max_support = export.max_support
    self.support_widths = support_widths(self.max_support, export.buckets)
    # The programs `warm_up` runs: per batch size, a ranking, a predict of
    # each item width and an adaptation of each support width.
    self.shapes = len(self.user_sizes) * (
        1 + len(self.item_sizes) + len(self.support_widths))
    self._meta_fast = export.meta_leaves

  # --------------------------------------------------------------- users

  def parse_user(self, text: str):
    """A user id of the URL in the export's id type (`parsing.url_id`:
    ValueError where an integer-id export's `text` is not such an id)."""
    e = self.export
    integer = e.user_ids.dtype.kind in "iu" or (
        not len(e.user_ids) and e.table_ids.dtype.kind in "iu")
    return parsing.url_id(text) if integer else text

  def item_positions(self, item_ids: Sequence) -> np.ndarray:
    """Catalogue positions of item ids (KeyError naming unknown ones)."""
    if not len(item_ids):
      return np.zeros(0, np.int64)
    return self.export.item_index(item_ids)

  def served(self, user) -> Served:
    """The user's model as it stands now."""
    return self.served_all([user])[0]

  def served_all(self, users: Sequence) -> list[Served]:
    """`served` of each of `users`; those whose session dropped its leaves
    (`sessions`) are re-adapted on their ratings first, together."""
    # Taken first: re-adapting the dropped may drop others of `users`
    # (those served last are dropped last).
    sessions = {u: self.sessions.get(u) for u in users}
    for u in sessions:
      self.sessions.touch(u)
    dropped = self.sessions.dropped(users)
    # A divergence is reported at a user's first adaptation only.
    sessions.update(zip(dropped, self._adapt_users(dropped, [
        (self.sessions[u].items, self.sessions[u].ratings) for u in dropped],
        [None if self.sessions[u].adapted_once else f"user {u!r}"
         for u in dropped])))
    return [self._served(u, sessions[u]) for u in users]

  def _adapt_users(self, users: list, histories: list,
                   names: list) -> list[Session]:
    """Sessions of `users` adapted on their `histories`, `max_batch` a
    device call, and kept (`_adapt`, warning as `names` say)."""
    out = []
    for lo in range(0, len(users), self.limits.max_batch):
      part = slice(lo, lo + self.limits.max_batch)
      rows = [self.export.user_row(u) for u in users[part]]
      fresh = self._adapt(
          [self._features(u, r) for u, r in zip(users[part], rows)],
          histories[part], [self._unadapted(r) for r in rows], names[part])
      self.sessions.update(zip(users[part], fresh))
      out += fresh
    return out

  def _served(self, user, session: Session | None) -> Served:
    row = self.export.user_row(user)
    features = self._features(user, row)
    if session is not None:
      return Served(session.source, session.fast, features, session.items,
                    session.personal)
    source, fast, _, personal = self._unadapted(row)
    if row >= 0 and source == "meta":  # a damaged row (`_unadapted`)
      return self._served(user, self._readapt(user, row))
    rated = np.zeros(0, np.int64)
    if row >= 0:
      e = self.export
      lo, hi = e.rated_offsets[row], e.rated_offsets[row + 1]
      rated = np.asarray(e.rated_items[lo:hi], np.int64)
    return Served(source, fast, features, rated, personal)

  def _readapt(self, user, row: int) -> Session:
    """An export user whose stored leaves are not finite (damage past the
    load's digests), adapted on its ratings as the export was (helper D)."""
    log.warning("user %r: its adapted parameters in %s (row %d) are not"
                " finite: damaged (`metarec export --verify` names the file);"
                " adapting it on its ratings instead", user, self.export.path,
                row)
    return self._adapt_users([user], [self.export.known_ratings(row)],
                             [f"user {user!r}"])[0]

  def _unadapted(self, row: int
                 ) -> tuple[str, dict[str, np.ndarray], int, bool]:
    """(source, leaves, support size, `Session.personal`) of the export's
    row `row` (-1: the meta-parameters'): a user's model before any
    interaction. A row that is not finite (damage past the load's digests)
    is the meta-parameters' too, also as the fallback of a diverging
    re-adaptation (reviewer R2)."""
    e = self.export
    leaves = row >= 0 and {p: layout.decode(v[row], e.dtype)
                           for p, v in e.adapted.items()}
    if not leaves or not all(np.isfinite(v).all() for v in leaves.values()):
      return "meta", self._meta_fast, 0, False
    return ("export", leaves, int(e.support_sizes[row]),
            e.row_personal(row))

  def _features(self, user, row: int) -> dict[str, np.ndarray]:
    if row >= 0:
      return {n: np.asarray(t[row]) for n, t in
              self.export.user_features.items()}
    return self.export.table_features_of(user)

  def _stack(self, users: list[Served], size: int):
    """Leaves and features of `users` stacked and padded to `size` rows
    (padding repeats the first user; its outputs are dropped)."""
    return (sessions_lib.stack_padded([u.fast for u in users], size),
            sessions_lib.stack_padded([u.features for u in users], size))

  # ------------------------------------------------------------ requests

  def source(self, user) -> str:
    """What serves `user`: its session's source, `export` or `meta`."""
    if user in self.sessions:
      return self.sessions[user].source
    return "export" if self.export.user_row(user) >= 0 else "meta"

  def personal(self, user) -> bool:
    """Whether `user`'s own ratings shaped the model that serves it
    (`export.UserModel.personal`): its session's, its export row's, or
    False (the meta-parameters')."""
    if user in self.sessions:
      return self.sessions[user].personal
    row = self.export.user_row(user)
    return row >= 0 and self.export.row_personal(row)

  def rank_key(self, user) -> Any:
    """Where `user`'s ranking is kept: under the user where it has a model
    of its own (an export row or a session), else under its feature row,
    as every such user is served the meta-parameters (a key per id kept a
    copy of one ranking for every unknown id asked about)."""
    if user in self.sessions or self.export.user_row(user) >= 0:
      return user
    features = self.export.table_features_of(user)
    return ("meta",) + tuple((n, np.asarray(features[n]).tobytes())
                             for n in sorted(features))

  def kept_ranking(self, user, k: int) -> list | None:
    """The user's kept top `k` (`rankings`), or None."""
    return self._kept(user, k)[0]

  def kept_reply(self, user, k: int) -> dict | None:
    """`recommend`'s reply from a kept ranking, with no device call (the
    server answers it outside the device's thread), or None: not kept, or
    an export row whose `uncounted` bit is still to be found on the device
    (`Export.row_flags`: an export written before the bit)."""
    kept = self.kept_ranking(user, k)
    row = -1 if user in self.sessions else self.export.user_row(user)
    if kept is None or (row >= 0 and not self.export.knows_flags(row)):
      return None
    return self._kept_reply(user, kept)

  def _kept_reply(self, user, items: list) -> dict:
    return {"source": self.source(user), "personal": self.personal(user),
            "items": items}

  def _kept(self, user, k: int) -> tuple[list | None, Any]:
    """(`kept_ranking`, the `rank_key` it is kept under)."""
    kept = self.rankings.get(user, k)  # kept under its own id: no lookup
    if kept is not None:  # of the export's rows (7 us, 70 times the get)
      return kept, user
    key = self.rank_key(user)
    return (None if key is user else self.rankings.get(key, k)), key

  def recommend(self, requests: list[tuple[Any, int]]) -> list[dict]:
    """`[(user, k)]` -> `[{"source", "personal", "items": [(item_id,
    score)]}]`.

    A user's top `max_k` is kept (`rankings`) until the user learns; only
    users not kept are ranked on the device, all of them in one call.
    """
    out = [None] * len(requests)
    live, keys = [], []
    for i, (user, k) in enumerate(requests):
      kept, key = self._kept(user, k)
      if kept is None:
        live.append(i)
        keys.append(key)
      else:
        out[i] = self._kept_reply(user, kept)
    served = self.served_all([requests[i][0] for i in live])
    for i, key, r in zip(live, keys,
                         self._rank(served, [self.k] * len(live))):
      k = requests[i][1]
      ids, scores = [a for a, _ in r["items"]], [b for _, b in r["items"]]
      # Complete: fewer came, or the whole catalogue was asked (helper S).
      self.rankings.put(key, ids, scores, complete=len(ids) < self.k
                        or self.k == self.export.num_items)
      out[i] = {**r, "items": r["items"][:k]}
    return out

  def _rank(self, served: list[Served], ks: list[int]) -> list[dict]:
    out = []
    for lo in range(0, len(served), self.limits.max_batch):
      part = served[lo:lo + self.limits.max_batch]
      size = bucket(len(part), self.user_sizes)
      fast, features = self._stack(part, size)
      excluded = np.zeros((size, self.export.num_items), bool)
      for i, user in enumerate(part):
        excluded[i, user.rated] = True
      scores, index = self.export.top_k_users(fast, features, excluded,
                                              self.k)
      for i, (user, k) in enumerate(zip(part, ks[lo:lo + len(part)])):
        keep = np.isfinite(scores[i, :k])
        ids = self.export.item_ids[index[i, :k][keep]].tolist()
        out.append({"source": user.source, "personal": user.personal,
                    "items": list(zip(ids, scores[i, :k][keep].tolist()))})
    return out

  def predict(self, requests: list[tuple[Any, np.ndarray]]) -> list[dict]:
    """`[(user, catalogue positions)]` -> `[{"source", "personal",
    "scores": [...]}]`."""
    out = []
    for lo in range(0, len(requests), self.limits.max_batch):
      part = requests[lo:lo + self.limits.max_batch]
      served = self.served_all([user for user, _ in part])
      size = bucket(len(part), self.user_sizes)
      width = bucket(max(len(p) for _, p in part), self.item_sizes)
      fast, features = self._stack(served, size)
      index = np.zeros((size, width), np.int32)
      for i, (_, positions) in enumerate(part):
        index[i, :len(positions)] = positions
      scores = self.export.score_users(fast, features, index)
      for i, ((_, positions), user) in enumerate(zip(part, served)):
        out.append({"source": user.source, "personal": user.personal,
                    "scores": scores[i, :len(positions)].tolist()})
    return out

  def learn(self, requests: list[tuple[Any, np.ndarray, np.ndarray]], *,
            adapt_last: int | None = None) -> list[dict]:
    """Adds ratings to users and re-adapts each of them once.

    Args:
      requests: `[(user, catalogue positions, ratings)]`, in arrival order
        (a later rating of an item replaces an earlier one).
      adapt_last: adapt only the last this many users (in order of their
        first request); the others keep their ratings and are adapted when
        first asked for (a start's replay of the log: its time is bounded
        by `--adapted_cache`, whatever the users the log holds).

    Returns:
      Per request `{"support_size", "rated", "adapted", "personal"}` of its
      user afterwards (`adapted` false: adaptation diverged, see the
      module; a user not adapted yet counts as adapted, with `personal`
      None; `personal`: `Session.personal`).
    """
    order = list(dict.fromkeys(user for user, _, _ in requests))
    history = {user: self._history(user) for user in order}
    for user, positions, ratings in requests:
      items, values = history[user]
      history[user] = (np.concatenate([items, positions]),
                       np.concatenate([values, np.asarray(ratings,
                                                          np.float32)]))
    for user in order:
      self.rankings.forget(user)
    later = max(0, len(order) - adapt_last) if adapt_last is not None else 0
    if later:
      _, kept = sessions_lib.from_histories(
          [history[u] for u in order[:later]],
          num_items=self.export.num_items, max_support=self.max_support)
      self.sessions.update(zip(order[:later], kept))
    self._adapt_users(order[later:], [history[u] for u in order[later:]],
                      [f"user {u!r}" for u in order[later:]])
    return [{"support_size": self.sessions[user].support_size,
             "rated": len(self.sessions[user].items),
             "adapted": self.sessions[user].source == "adapted",
             "personal": self.sessions[user].personal}
            for user, _, _ in requests]

  def _history(self, user) -> tuple[np.ndarray, np.ndarray]:
    session = self.sessions.get(user)
    if session is not None:
      return session.items, session.ratings
    row = self.export.user_row(user)
    if row >= 0:
      return self.export.known_ratings(row)
    return np.zeros(0, np.int64), np.zeros(0, np.float32)

  def _adapt(self, features: list[dict], histories: list[tuple],
             fallbacks: list[tuple], names: Sequence[str] | None
             ) -> list[Session]:
    """`sessions.adapt` at the engine's sizes (at most max_batch users)."""
    return sessions_lib.adapt(self.export, features, histories, fallbacks,
                              names, user_sizes=self.user_sizes,
                              support_widths=self.support_widths)

  def adapt(self, requests: list[tuple[np.ndarray, np.ndarray, int]]
            ) -> list[dict]:
    """Anonymous sessions: `[(positions, ratings, k)]` -> the top `k` of a
    model adapted on the ratings (nothing is kept), with `support_size`,
    `adapted` (false: adaptation diverged and the meta-parameters ranked,
    see the module) and `personal` (`Session.personal`)."""
    missing = self.export.table_features_of(None)
    out = []
    for lo in range(0, len(requests), self.limits.max_batch):
      part = requests[lo:lo + self.limits.max_batch]
      sessions = self._adapt([missing] * len(part),
                             [(p, np.asarray(r, np.float32))
                              for p, r, _ in part],
                             [self._unadapted(-1)] * len(part),
                             ["an anonymous session"] * len(part))
      served = [Served(s.source, s.fast, missing, s.items, s.personal)
                for s in sessions]
      ranked = self._rank(served, [k for _, _, k in part])
      for s, r in zip(sessions, ranked):
        r["support_size"] = s.support_size
        r["adapted"] = s.source == "adapted"
      out.extend(ranked)
    return out

  # ------------------------------------------------------------- warm-up

  def warm_up(self) -> int:
    """Compiles every bucket's program (so no request waits for one);
    returns how many shapes were run (`shapes`)."""
    user = self.served(None if not self.export.num_users else
                       self.export.user_ids[0].item())
    for size in self.user_sizes:
      self._rank([user] * size, [1] * size)
      for width in self.item_sizes:
        self.predict([(None, np.zeros(width, np.int64))] * size)
      for width in self.support_widths:
        history = (np.arange(width) % self.export.num_items,
                   np.full(width, self.export.rating_range[1], np.float32))
        self._adapt([user.features] * size, [history] * size,
                    [self._unadapted(-1)] * size, None)
    self.export.warm_row_flags()  # an export written before `uncounted`
    return self.shapes
