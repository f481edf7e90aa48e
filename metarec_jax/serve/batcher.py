"""An asyncio micro-batcher: concurrent requests become one call.

    batcher = MicroBatcher(run, max_batch=16, max_wait=0.002)
    result = await batcher.submit(request)

`run(requests) -> results` (a coroutine function, one result per request,
an `Exception` instance for a request that failed alone) is called with
whatever requests are waiting, at most `max_batch` of them; once the first
request of a batch has arrived, the batcher waits at most `max_wait` seconds
for more. Calls never overlap, so requests that arrive while one runs form
the next batch: under load, batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger("metarec")


class MicroBatcher:
  """Groups concurrent `submit` calls into batched `run` calls."""

  def __init__(self, run: Callable[[list], Awaitable[list]], *,
               max_batch: int, max_wait: float, name: str = "batch"):
    self.run = run
    self.max_batch = max_batch
    self.max_wait = max_wait
    self.name = name
    self.batches = 0
    self.requests = 0
    self._queue: asyncio.Queue | None = None
    self._task: asyncio.Task | None = None

  def start(self) -> None:
    """Starts the batching loop on the running event loop."""
    self._queue = asyncio.Queue()
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def stop(self) -> None:
    if self._task is not None:
      self._task.cancel()
      try:
        await self._task
      except asyncio.CancelledError:
        pass

  async def submit(self, request: Any) -> Any:
    """The result of `request`; raises its exception if it failed."""
    future = asyncio.get_running_loop().create_future()
    self._queue.put_nowait((request, future))
    return await future

  async def _collect(self) -> list:
    batch = [await self._queue.get()]
    if self._queue.qsize() + 1 < self.max_batch and self.max_wait > 0:
      await asyncio.sleep(self.max_wait)  # one timer, not one per request
    while len(batch) < self.max_batch and not self._queue.empty():
      batch.append(self._queue.get_nowait())
    return batch

  async def _loop(self) -> None:
    while True:
      batch = await self._collect()
      # A client that went away cancelled its future: skip its request.
      batch = [(r, f) for r, f in batch if not f.done()]
      if not batch:
        continue
      try:
        results = await self.run([r for r, _ in batch])
      except OSError as e:
        # Storage (a full disk): each request gets its 503, and the
        # operator one line per batch, not a traceback each time.
        log.error("%s batch of %d failed on storage: %s", self.name,
                  len(batch), e)
        e.logged = True  # (the app's 503 handler says no more of it)
        results = [e] * len(batch)
      except Exception as e:  # pylint: disable=broad-except
        # A bug on our side: every request of the batch gets a 500 and the
        # server keeps serving.
        log.exception("%s batch of %d failed", self.name, len(batch))
        results = [e] * len(batch)
      self.batches += 1
      self.requests += len(batch)
      for (_, future), result in zip(batch, results):
        if future.done():
          continue
        if isinstance(result, Exception):
          future.set_exception(result)
        else:
          future.set_result(result)
