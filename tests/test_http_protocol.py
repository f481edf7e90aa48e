"""`serve.http_protocol` on a real uvicorn server over loopback, with a
small app whose answers take as long as a test needs: the read deadline
and the head bound against pipelined and kept-alive requests."""

import asyncio
import json
import re
import socket
import threading
import time

import pytest
import uvicorn

from metarec_jax.serve import http_protocol

DEADLINE_S = 0.6


async def app(scope, receive, send):
  """Answers `{"path": ...}`; `/slow` after 1.5 s (longer than the
  deadline), once its body is in."""
  if scope["type"] != "http":
    return
  more = True
  while more:
    message = await receive()
    more = message.get("more_body", False)
  if scope["path"] == "/slow":
    await asyncio.sleep(1.5)
  body = json.dumps({"path": scope["path"]}).encode()
  await send({"type": "http.response.start", "status": 200,
              "headers": [(b"content-type", b"application/json"),
                          (b"content-length", b"%d" % len(body))]})
  await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def address():
  sock = socket.socket()
  sock.bind(("127.0.0.1", 0))
  sock.listen(64)
  protocol = type("Protocol", (http_protocol.JsonErrorsProtocol,),
                  {"read_seconds": DEADLINE_S})
  server = uvicorn.Server(uvicorn.Config(app, loop="uvloop", http=protocol,
                                         log_level="warning",
                                         lifespan="off"))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                            daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.01)
  yield sock.getsockname()
  server.should_exit = True
  thread.join(timeout=10)


def exchange(address, parts, *, gap=0.1, answers=None):
  """Sends `parts` `gap` s apart on one connection and reads until the
  server closes it or `answers` responses are in; returns the bytes."""
  with socket.create_connection(address, timeout=10) as sock:
    for i, part in enumerate(parts):
      if i:
        time.sleep(gap)
      sock.sendall(part)
    reply = b""
    try:
      while answers is None or reply.count(b"HTTP/1.1 ") < answers or (
          not reply.endswith(b"}")):
        chunk = sock.recv(65536)
        if not chunk:
          break
        reply += chunk
    except (ConnectionResetError, socket.timeout):
      pass
    return reply


def statuses(reply):
  return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]


def post(path, body, cut=None):
  head = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
          % (path, len(body)))
  whole = head + body
  return [whole] if cut is None else [whole[:-cut], whole[-cut:]]


def test_a_pipelined_request_behind_a_slow_answer_is_answered(address):
  """The deadline ran while uvicorn, answering the first request, did not
  read the second: a 408 came first, read by the client as the first
  request's answer, and both answers were lost."""
  first = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
  reply = exchange(address, [first] + post(b"/fast", b'{"a": 1}', cut=3),
                   answers=2)
  assert statuses(reply) == [200, 200], reply
  assert reply.index(b'"/slow"') < reply.index(b'"/fast"')


def test_a_pipelined_request_that_stalls_still_has_a_deadline(address):
  """A request beginning in the read that ended the one before it got no
  deadline: a client stalling there was held open for good."""
  first = b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
  start = time.perf_counter()
  reply = exchange(address, [first + b"GET /fast HTTP/1.1\r\nHo"])
  assert statuses(reply) == [200, 408], reply
  assert time.perf_counter() - start < DEADLINE_S + 5


def test_idle_time_between_kept_alive_requests_is_not_counted(address):
  with socket.create_connection(address, timeout=10) as sock:
    for _ in range(3):
      sock.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
      assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
      time.sleep(DEADLINE_S * 1.5)  # under uvicorn's keep-alive of 5 s


def test_a_head_just_over_the_bound_is_a_431(address):
  """The read that completed a head was not counted: heads up to the
  bound plus one read (about 1.25 MiB) passed."""
  big = b"a" * (http_protocol.MAX_HEAD_BYTES + 10)
  reply = exchange(address, [b"GET /fast HTTP/1.1\r\nHost: x\r\nX-A: " + big
                             + b"\r\n\r\n"], answers=1)
  assert statuses(reply) == [431], reply[:100]
