"""Rankings kept for users whose model has not changed since.

Ranking the whole catalogue costs a pass of the model over every item for
each user; a user's ranking only changes when the user learns something.
`RankCache` keeps each user's top `max_k` (least recently used users go
first) and forgets a user as soon as it learns. An export written with
`metarec export --top_k=K` carries every exported user's top K
(`topk.jsonl`, ranked on the device at export time by the same model and
exclusions): `preload` fills the cache from it, so a request for `k <= K`
of an exported user is answered without the device.
"""

from __future__ import annotations

import collections
import json
import math
import os
from typing import Any

import numpy as np

from metarec_jax.errors import InputError
from metarec_jax.export import checksums, layout
from metarec_jax.export.serving import Export


class RankCache:
  """user -> (item ids, scores, complete): the user's best items in order;
  `complete` when they are all its candidates (fewer than asked).

  `get` may run on the event loop while the device thread puts and
  forgets: each is a single OrderedDict operation (atomic under the GIL).
  """

  def __init__(self, max_users: int):
    self.max_users = max_users
    self._entries: collections.OrderedDict = collections.OrderedDict()
    self.hits = 0

  def __len__(self) -> int:
    return len(self._entries)

  def get(self, user, k: int) -> list[tuple[Any, float]] | None:
    """The user's top `k`, or None if not kept (or kept shorter)."""
    entry = self._entries.get(user)
    if entry is None:
      return None
    ids, scores, complete = entry
    if len(ids) < k and not complete:
      return None
    try:  # the event loop reads while the device thread may evict
      self._entries.move_to_end(user)
    except KeyError:
      pass
    self.hits += 1
    top = ids[:k]
    return list(zip(top if isinstance(top, list) else top.tolist(),
                    scores[:k].tolist()))

  def put(self, user, ids: list, scores: list, complete: bool) -> None:
    if self.max_users <= 0:
      return
    # As arrays: a top 100 of Python ints and floats took 7.2 KB, 0.7 GB
    # at the default cache size; `get` gives back the same values. Text
    # ids stay a list: a fixed-width array is as wide as its longest id.
    array = np.asarray(ids)
    self._entries[user] = (array if array.dtype.kind in "iu" else list(ids),
                           np.asarray(scores, np.float32), complete)
    self._entries.move_to_end(user)
    while len(self._entries) > self.max_users:
      self._entries.popitem(last=False)

  def forget(self, user) -> None:
    self._entries.pop(user, None)

  def preload(self, export: Export) -> int:
    """Keeps the export's `topk.jsonl` rankings; returns how many users.

    The file is hashed whole against the manifest first (`export.load`
    checks only its size and head; it is read whole here anyway), so a
    damaged ranking is never served.

    Raises:
      checksums.DamagedExport: the file differs from the manifest's record.
      InputError: a line that is not a ranking of known items (an export
        of format 1 records no digest to check).
    """
    path = os.path.join(export.path, layout.TOPK_FILE)
    k = int(export.manifest.get("top_k") or 0)
    if not k or not os.path.exists(path):
      return 0
    record = export.manifest.get("files", {}).get(layout.TOPK_FILE)
    if record is not None:
      checksums.check(export.path, {layout.TOPK_FILE: record},
                      everything=True)
    n = 0
    with open(path, encoding="utf-8") as f:
      for line_number, line in enumerate(f, 1):
        if n >= self.max_users:
          break
        try:
          user, ids, scores = _ranking(line, export)
        except (ValueError, KeyError, TypeError) as e:
          raise InputError(f"not a ranking of the export's items ({e}): the"
                           " export is damaged; export again", path=path,
                           line=line_number) from None
        # (a top k of the whole catalogue holds every candidate)
        self.put(user, ids, scores,
                 complete=len(ids) < k or k >= export.num_items)
        n += 1
    return n


def _ranking(line: str, export: Export) -> tuple[Any, list, list]:
  """(user, item ids, scores) of one `topk.jsonl` line, checked."""
  row = json.loads(line)
  # float32 first: the device's scores, whose float64 text the live
  # ranking serves (topk.jsonl holds each float32 exactly, in 9 digits).
  ids = row["items"]
  scores = [float(np.float32(float(s))) for s in row["scores"]]
  if export.item_ids.dtype.kind in "iu":
    ids = np.asarray(ids, np.int64).tolist()
  if len(ids) != len(scores) or not all(map(math.isfinite, scores)):
    raise ValueError("items and finite scores of unequal length")
  if ids:
    export.item_index(ids)  # KeyError: an item the catalogue lacks
  return row["user"], ids, scores
