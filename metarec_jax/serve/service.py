"""The server's work behind the routes: batchers, the device and log
threads, and the replay of the log at start.

One thread runs every device call (the `Engine` is not thread-safe and the
device runs one program at a time anyway); another writes the log, so a
batch's fsync overlaps other endpoints' device work. A batch of
interactions is logged and fsynced before its users are re-adapted and
before any of its requests is answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import numpy as np

from metarec_jax.serve.batcher import MicroBatcher
from metarec_jax.serve.engine import Engine
from metarec_jax.serve.interaction_log import InteractionLog

log = logging.getLogger("metarec")


class Service:
  """The batched endpoints of one engine and its log.

  Attributes:
    recommend, predict, learn, adapt: `MicroBatcher`s; `submit` takes the
      request tuple of the `Engine` method of the same name (`learn` also
      the external item ids, for the log).
  """

  def __init__(self, engine: Engine, interactions: InteractionLog, *,
               max_wait: float):
    self.engine = engine
    self.log = interactions
    self._device = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="device")
    self._disk = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="log")
    size = engine.limits.max_batch
    self.batchers = {
        name: MicroBatcher(run, max_batch=size, max_wait=max_wait, name=name)
        for name, run in (("recommend", self._recommend),
                          ("predict", self._predict),
                          ("learn", self._learn), ("adapt", self._adapt))}
    self.recommend = self.batchers["recommend"]
    self.predict = self.batchers["predict"]
    self.learn = self.batchers["learn"]
    self.adapt = self.batchers["adapt"]

  async def start(self) -> None:
    for b in self.batchers.values():
      b.start()

  async def stop(self) -> None:
    for b in self.batchers.values():
      await b.stop()
    self._device.shutdown(wait=True)
    self._disk.shutdown(wait=True)

  def stats(self) -> dict:
    return {name: {"requests": b.requests, "batches": b.batches}
            for name, b in self.batchers.items()}

  async def _on(self, pool, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

  async def _recommend(self, requests):
    return await self._on(self._device, self.engine.recommend, requests)

  async def _predict(self, requests):
    return await self._on(self._device, self.engine.predict, requests)

  async def _adapt(self, requests):
    return await self._on(self._device, self.engine.adapt, requests)

  async def _learn(self, requests):
    """`[(user, item ids, positions, ratings)]`: log (one fsync), then
    re-adapt."""
    users = np.concatenate([np.full(len(r[1]), r[0], dtype=object)
                            for r in requests])
    items = np.concatenate([np.asarray(r[1], dtype=object) for r in requests])
    ratings = np.concatenate([np.asarray(r[3], np.float64) for r in requests])
    await self._on(self._disk, self.log.append, users, items, ratings)
    return await self._on(self._device, self.engine.learn,
                          [(u, p, r) for u, _, p, r in requests])


def replay(engine: Engine, interactions: InteractionLog) -> dict:
  """Teaches `engine` every rating of the log, in file order.

  Ratings of items that are not in the export's catalogue (a later export
  dropped them) are skipped and counted.

  Raises:
    InputError: a malformed log line (file and line named).
  """
  rows = interactions.read()
  if rows is None:
    return {"ratings": 0, "users": 0, "adapted": 0, "skipped_items": 0}
  known = engine.export.known_items(rows.items)
  users, items, ratings = rows.users[known], rows.items[known], rows.ratings[
      known]
  positions = engine.item_positions(items) if len(items) else items
  ids, inverse = np.unique(users, return_inverse=True)
  order = np.argsort(inverse, kind="stable")  # file order within a user
  bounds = np.searchsorted(inverse[order], np.arange(len(ids) + 1))
  # Users by their last logged rating: the `--adapted_cache` most recent
  # are adapted now, the others when first asked for.
  last = np.zeros(len(ids), np.int64)
  np.maximum.at(last, inverse, np.arange(len(inverse)))
  requests = [(ids[i].item(), positions[order[bounds[i]:bounds[i + 1]]],
               ratings[order[bounds[i]:bounds[i + 1]]].astype(np.float32))
              for i in np.argsort(last)]
  engine.learn(requests, adapt_last=engine.sessions.capacity)
  skipped = int((~known).sum())
  if skipped:
    log.warning("%s: %d logged ratings of items not in the export skipped",
                interactions.path, skipped)
  return {"ratings": int(known.sum()), "users": len(ids),
          "adapted": min(len(ids), engine.sessions.capacity),
          "skipped_items": skipped}
