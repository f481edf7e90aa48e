"""What keeps clients in bounds: the bearer token and the body limit."""

from __future__ import annotations

import asyncio
import collections
import hmac
import json

import fastapi
from fastapi.security import HTTPBearer
from starlette.routing import Match

from metarec_jax.errors import InputError


def read_token(path: str) -> str:
  """The token in `path` (surrounding whitespace dropped).

  Raises:
    InputError: the file is missing, unreadable or blank.
  """
  try:
    with open(path, encoding="utf-8") as f:
      token = f.read().strip()
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"cannot read the token file: {e}", path=path) from None
  if not token or any(c.isspace() for c in token):
    raise InputError("the token file must hold one token (no spaces)",
                     path=path)
  return token


def bearer() -> HTTPBearer:
  """A FastAPI dependency that declares `Authorization: Bearer` to
  OpenAPI. It checks nothing: `BearerGuard` answers a request without the
  token with a 401 before any route runs."""
  return HTTPBearer(auto_error=False)


async def _send_error(send, status: int, message: str,
                      headers: tuple = ()) -> None:
  """A whole `{"error": message}` response, the connection closed."""
  body = json.dumps({"error": message}).encode()
  await send({"type": "http.response.start", "status": status,
              "headers": [(b"content-type", b"application/json"),
                          (b"content-length", str(len(body)).encode()),
                          (b"connection", b"close"), *headers]})
  await send({"type": "http.response.body", "body": body})


class BearerGuard:
  """ASGI middleware: a request without `Authorization: Bearer <token>` is
  a 401 before its body is read or validated, so a client without the
  token learns nothing of the API (not even which fields a body needs);
  `/healthz` is open. (`bearer` declares the scheme to OpenAPI.)"""

  def __init__(self, app, token: str | None):
    self.app = app
    self.token = None if token is None else token.encode()

  async def __call__(self, scope, receive, send):
    if (scope["type"] != "http" or self.token is None
        or scope["path"] == "/healthz"):
      return await self.app(scope, receive, send)
    scheme, _, given = dict(scope["headers"]).get(
        b"authorization", b"").partition(b" ")
    if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(),
                                                           self.token):
      return await self.app(scope, receive, send)
    await _send_error(send, 401, UNAUTHORIZED,
                      ((b"www-authenticate", b"Bearer"),))


def known_query(*takes: str):
  """A FastAPI dependency for a route whose query parameters are `takes`:
  any other parameter, or one given twice, is a 422 naming it (a typo
  such as `?kk=5` was answered with the default 10, and `?k=5&k=6` with
  the last, where the client may have meant either)."""

  def check(request: fastapi.Request) -> None:
    counts = collections.Counter(
        name for name, _ in request.query_params.multi_items())
    for name, count in counts.items():
      if name not in takes:
        raise fastapi.HTTPException(
            422, f"query parameter {name!r} is not one this route takes"
            f" ({', '.join(takes) or 'it takes none'})")
      if count > 1:
        raise fastapi.HTTPException(
            422, f"query parameter {name!r} given {count} times: give it"
            " once")

  return check


UNAUTHORIZED = ("missing or wrong bearer token (Authorization: Bearer <token"
                " of --token-file>)")


def _is_json(content_type: bytes) -> bool:
  """Whether a Content-Type is JSON's media type (any parameters, any
  case). Its whole name, not a prefix: FastAPI does not parse
  `application/jsonl` (or `application/json5`) as JSON, so such a body
  passed here and was answered with a 422 that the body (valid JSON) is
  not an object."""
  return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


class _Duplicate(ValueError):
  pass


def _unique(pairs: list) -> dict:
  """A JSON object's pairs as a dict, refusing a name given twice (json
  keeps the last: {"ratings": A, "ratings": B} learned B, dropping A)."""
  obj = dict(pairs)
  if len(obj) < len(pairs):
    seen = set()
    name = next(k for k, _ in pairs if k in seen or seen.add(k))
    raise _Duplicate(f"{name}: given twice in one JSON object")
  return obj


class BodyLimit:
  """ASGI middleware: a request body over `max_bytes` is a 413, whether
  announced by Content-Length or streamed in chunks, and a POST body that
  is not declared JSON a 415, one that is not UTF-8 a 400, one that
  names a field twice a 422. The body is read here (it is small: that is
  the point) and handed on whole."""

  def __init__(self, app, max_bytes: int, routes=()):
    self.app = app
    self.max_bytes = max_bytes
    self.routes = routes  # the app's: only a body one of them takes is JSON

  async def _reject(self, send, status: int = 413,
                    message: str | None = None) -> None:
    await _send_error(send, status, message
                      or f"request body over {self.max_bytes} bytes")

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    started = False

    async def sending(message):
      nonlocal started
      started = True
      await send(message)

    try:
      await self._guarded(scope, receive, sending)
    except asyncio.CancelledError:
      # The server is stopping and its grace period ran out (uvicorn
      # cancels what still runs, a client still sending its body, say):
      # uvicorn would answer a text 500 and log a traceback.
      if started:
        raise
      await _send_error(send, 503, "the server is stopping: this request"
                        " may not have been handled; send it again")

  def _routed(self, scope) -> bool:
    """Whether a route takes this request (its path and method): where
    none does, the router's 404 or 405 says so, not a 415."""
    return not self.routes or any(
        route.matches(scope)[0] == Match.FULL for route in self.routes)

  async def _guarded(self, scope, receive, send):
    headers = dict(scope["headers"])
    length = headers.get(b"content-length", b"0")
    if not length.isdigit() or int(length) > self.max_bytes:
      return await self._reject(send)
    if (scope["method"] == "POST"
        and not _is_json(headers.get(b"content-type", b""))
        and self._routed(scope)):  # matched only for a refusal
      return await self._reject(send, 415, "send the body as JSON with"
                                " Content-Type: application/json")
    chunks, size = [], 0
    while True:
      message = await receive()
      if message["type"] != "http.request":  # the client went away
        return
      chunks.append(message.get("body", b""))
      size += len(chunks[-1])
      if size > self.max_bytes:
        return await self._reject(send)
      if not message.get("more_body", False):
        break
    body = b"".join(chunks)
    try:
      # JSON between systems is UTF-8 (RFC 8259); FastAPI answered other
      # bytes with a 400 "There was an error parsing the body".
      if scope["method"] == "POST":
        json.loads(body.decode("utf-8"), object_pairs_hook=_unique)
    except UnicodeDecodeError as e:
      return await self._reject(send, 400, "malformed JSON: not UTF-8 (byte"
                                f" 0x{body[e.start]:02x} at offset {e.start})")
    except _Duplicate as e:
      return await self._reject(send, 422, str(e))
    except json.JSONDecodeError:
      pass  # malformed JSON: FastAPI names where
    except ValueError as e:  # a number of over 4300 digits
      return await self._reject(send, 400, "malformed JSON: "
                                + str(e).split(";")[0])
    except RecursionError:  # FastAPI's parse would answer a text 500
      return await self._reject(send, 400, "malformed JSON: nested deeper"
                                " than the parser goes")
    whole = {"type": "http.request", "body": body, "more_body": False}

    async def replay():
      nonlocal whole
      if whole is not None:
        message, whole = whole, None
        return message
      return await receive()

    await self.app(scope, replay, send)
