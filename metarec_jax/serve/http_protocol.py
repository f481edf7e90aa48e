"""uvicorn's HTTP protocol, with the API's error shape for what it refuses,
and bounds on what a client may hold before its request is in.

A request that cannot be parsed as HTTP (a garbled request line, a
`Content-Length` that is not a number, a broken chunked body) never reaches
the app: uvicorn answers it itself, `400` with the plain text "Invalid HTTP
request received.". Every other error of the API is `{"error": "one
line"}`, so a client that reads that shape would fail on these. This
protocol sends the same status with the JSON body.

uvicorn's `httptools` protocol (the parser the server runs on) bounds
neither a request's head nor the time a client takes to send it: one
client sending a 300 MiB header made the server hold it all, and
connections that sent half a request (or nothing) stayed open for good,
until the server ran out of descriptors and every client was reset. Here a
head over `MAX_HEAD_BYTES` is a 431, and a request not wholly received
`read_seconds` after its first byte (or after the connection opened) is a
408; both close the connection. The clock stops while an earlier request
on the connection is answered (uvicorn reads a pipelined request only
then), and no refusal is written before an earlier request's answer: the
client would take it for that answer. Everything else is uvicorn's.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A request line and headers beyond this are refused, counted by the reads
# that carry them (a head's last read may hold the body's start too; real
# heads are a few kB).
MAX_HEAD_BYTES = 1 << 20

REASONS = {400: b"Bad Request", 408: b"Request Timeout",
           431: b"Request Header Fields Too Large"}


class JsonErrorsProtocol(HttpToolsProtocol):
  """`HttpToolsProtocol` whose own refusals are `{"error": ...}`, with a
  bounded head and a deadline for each request to arrive."""

  read_seconds = 30.0  # `metarec serve --read_timeout_s`

  def connection_made(self, transport) -> None:
    super().connection_made(transport)
    # Reading a request's head (before its first byte too), its body.
    self._head_bytes, self._in_head, self._in_body = 0, True, False
    self._deadline = self._running = None  # `_running`: the app's request
    self._arm()

  def _arm(self) -> None:
    self._disarm()
    self._deadline = self.loop.call_later(self.read_seconds, self._too_slow)

  def _disarm(self) -> None:
    if self._deadline is not None:
      self._deadline.cancel()
      self._deadline = None

  def _start_asgi_task(self, cycle, app) -> None:
    self._running = cycle
    super()._start_asgi_task(cycle, app)

  def _answering_earlier(self) -> bool:
    """Whether an earlier request on the connection is still being
    answered (the one being read waits for it: uvicorn reads a pipelined
    body only then)."""
    running = self._running
    return (running is not None and not running.response_complete
            and not (self._in_body and running is self.cycle))

  def data_received(self, data: bytes) -> None:
    if self._in_head:  # counted before the parser holds it
      self._head_bytes += len(data)
      if self._head_bytes > MAX_HEAD_BYTES:
        self.refuse(431, "the request's line and headers exceed"
                    f" {MAX_HEAD_BYTES} bytes")
        return
    super().data_received(data)

  def on_message_begin(self) -> None:
    super().on_message_begin()
    if self._deadline is None:  # a request after a kept-alive one
      self._arm()

  def on_headers_complete(self) -> None:
    self._in_head, self._in_body = False, True
    super().on_headers_complete()

  def on_message_complete(self) -> None:
    self._disarm()  # the request is in: the app's time is not the client's
    self._head_bytes, self._in_head, self._in_body = 0, True, False
    super().on_message_complete()

  def connection_lost(self, exc) -> None:
    self._disarm()
    super().connection_lost(exc)

  def eof_received(self) -> bool | None:
    """A client that stops sending once its request is in (a half-close,
    legal in HTTP/1.1) still gets its answer: the transport stays open
    while the request is answered (it closed, and an interaction was
    learned and logged that the client never heard of)."""
    if self.cycle is not None and not self.cycle.response_complete:
      return True
    return None

  def _too_slow(self) -> None:
    self._deadline = None
    if self.transport.is_closing():
      return
    if self._answering_earlier():  # the wait is ours, not the client's
      self._arm()
      return
    if self._in_body:
      # Its head is in and the app waits for the rest of its body: to the
      # app the client is gone.
      _gone(self.cycle)
    self.refuse(408, f"the request did not arrive within {self.read_seconds:g}"
                " s (metarec serve --read_timeout_s)")

  def send_400_response(self, msg: str) -> None:
    self.refuse(400, f"malformed HTTP request: {msg}")

  def refuse(self, status: int, message: str) -> None:
    """Answers `status` with `{"error": message}` and closes; where an
    earlier request is still being answered, closes without a word (its
    answer is dropped: a refusal before it would read as its answer)."""
    self._disarm()
    if self._answering_earlier():
      _gone(self._running, self.cycle)
      self.transport.close()
      return
    body = json.dumps({"error": message}).encode()
    head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])]
    for name, value in self.server_state.default_headers:
      head += [name, b": ", value, b"\r\n"]
    head += [b"content-type: application/json\r\n",
             b"content-length: %d\r\n" % len(body),
             b"connection: close\r\n\r\n"]
    self.transport.write(b"".join(head) + body)
    self.transport.close()


def _gone(*cycles) -> None:
  """Tells each request's app that its client is gone, as uvicorn does
  when a connection is lost: the app stops waiting for its body, and its
  writes to the transport are dropped."""
  for cycle in cycles:
    cycle.disconnected = True
    cycle.message_event.set()
