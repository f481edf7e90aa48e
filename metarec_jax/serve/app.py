"""The HTTP API (FastAPI): routes, request and response schemas, errors.

    GET  /healthz (or HEAD)                        no token needed
    GET  /v1/users/{user}/recommendations?k=10     the user's top k, unrated
    POST /v1/predict               {user, items}   predicted ratings
    POST /v1/users/{user}/interactions {ratings: [[item, rating], ...]}
                                                   logged, then re-adapted
    POST /v1/adapt                 {ratings, k}    an anonymous session's top k

OpenAPI docs at /docs (with a token: the schema at /openapi.json, behind
it). Every error is `{"error": "<one line>"}` with a 4xx
status: 400 malformed JSON, 401 a missing or wrong token, 404 unknown
items, 413 a body over the limit, 422 a wrong type, a list over its bound,
a rating that is NaN, off the scale or (for whole-star datasets) not whole.
"""


import contextlib
import logging
import math
from typing import Annotated, Literal

import fastapi
from fastapi import Depends, FastAPI, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
import numpy as np
import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict
from pydantic_core import PydanticCustomError
from starlette import convertors
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from metarec_jax.serve import guards, interaction_log
from metarec_jax.serve.service import Service
from metarec_jax.workdir.restore import served_values


class _AnyText(convertors.Convertor):
  """A path parameter of any characters, '/' and line breaks included
  (`{name:path}` stops at a line break): the route's handler judges it."""

  regex = "(?s:.*)"

  def convert(self, value: str) -> str:
    return value

  def to_string(self, value: str) -> str:
    return value


convertors.register_url_convertor("text", _AnyText())

log = logging.getLogger("metarec")


def _digits(value):
  """A query's `k` as written: ASCII digits alone, after a `-` that the
  range check then names (a lax int would take `1_0`, `+5` or `5.0` as a
  number, so a client's typo got an answer). (After `Query(...)` in the
  annotation, which keeps the schema's `minimum` and `maximum`.)"""
  digits = value.removeprefix("-") if isinstance(value, str) else "0"
  if not (digits.isascii() and digits.isdigit()):
    raise PydanticCustomError("digits",
                              "must be a whole number written in digits")
  return value


def error(status: int, message: str) -> JSONResponse:
  """The server's error answer: `{"error": message}` with `status`."""
  return JSONResponse({"error": message}, status_code=status)


def _where(loc) -> str:
  parts = [str(p) for p in loc if p not in ("body",)]
  return ".".join(parts) or "body"


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
  errors = exc.errors()
  first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
  if first.get("type") == "json_invalid":
    return 400, f"malformed JSON: {first.get('ctx', {}).get('error', '')}"
  more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
  return 422, f"{_where(first['loc'])}: {first['msg']}{more}"


# The longest string id a request may name, where the export's ids are
# shorter: a bound on what one request adds to the sessions and the log.
MAX_ID_LENGTH = 1024
PERSONAL = ("false: none of the ratings counts (fewer than the model's"
            " validated warm_min_support, or new items' alone, fewer than"
            " its new_item_min_support, both in /healthz; or a model"
            " trained with meta.inner_steps=0), so the model of a user"
            " without ratings is served")


def id_length(ids) -> int:
  """The longest string id a request may name: `MAX_ID_LENGTH`, or the
  longest of `ids` (the export's), which are all served (a catalogue of
  product URLs)."""
  if ids.dtype.kind not in "UO" or not ids.size:  # (integer ids)
    return MAX_ID_LENGTH
  text = ids if ids.dtype.kind == "U" else ids.astype(str)
  return max(MAX_ID_LENGTH, int(np.char.str_len(text).max()))


def create_app(service: Service, *, token: str | None,
               max_body: int) -> FastAPI:
  """The FastAPI application serving `service`.

  Args:
    token: the bearer token every endpoint but /healthz requires (None: no
      token).
    max_body: the largest request body in bytes (larger: 413).
  """
  engine = service.engine
  export = engine.export
  limits = engine.limits
  lo, hi = export.rating_range
  rates = getattr(export, "implicit", None) is None  # ratings, not clicks
  whole = service.log.format.integer_ratings
  # (and of the dataset's user table: the server serves those users too)
  user_length = max(id_length(export.user_ids), id_length(export.table_ids))

  if export.item_ids.dtype.kind in "iu":
    ItemId = Annotated[int, Strict(), Field(ge=-2 ** 63, lt=2 ** 63)]
  else:
    ItemId = Annotated[str, Strict(), Field(
        min_length=1, max_length=id_length(export.item_ids))]
  if engine.parse_user("0") == 0:
    UserId = Annotated[int, Strict(), Field(ge=-2 ** 63, lt=2 ** 63)]
  else:
    UserId = Annotated[str, Strict(), Field(min_length=1,
                                            max_length=user_length)]
  Rating = Annotated[float, Strict(), Field(allow_inf_nan=False)]
  Ratings = Annotated[list[tuple[ItemId, Rating]],
                      Field(min_length=1, max_length=limits.max_ratings)]
  K = Annotated[int, Strict(), Field(ge=1, le=limits.max_k)]

  class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

  class PredictBody(Body):
    user: UserId
    items: Annotated[list[ItemId], Field(min_length=1,
                                         max_length=limits.max_items)]

  class InteractionsBody(Body):
    ratings: Ratings | None = Field(
        None, description="[[item, rating], ...], oldest first")
    items: Annotated[list[ItemId], Field(
        min_length=1, max_length=limits.max_ratings)] | None = Field(
            None, description="implicit feedback: positives, for an"
            " implicit model's export")

  class AdaptBody(InteractionsBody):
    k: K = 10

  class ScoredItem(BaseModel):
    item: ItemId
    score: float = Field(description="the model's prediction, which ranks")
    rating: float | None = Field(None, description="a rating export's:"
                                 " the score clipped to the rating scale,"
                                 " as `metarec eval` scores it")

  class Recommendations(BaseModel):
    user: UserId | None
    source: Literal["export", "meta", "adapted"]
    personal: bool = Field(description=PERSONAL)
    items: list[ScoredItem]

  class Predictions(Recommendations):
    pass

  class Accepted(BaseModel):
    user: UserId
    accepted: int
    support_size: int
    rated: int
    adapted: bool = Field(description="false: adapting on the user's"
                          " ratings diverged, so the user's model before"
                          " any interaction is served (the ratings are"
                          " kept)")
    personal: bool = Field(description=PERSONAL)

  class Adapted(BaseModel):
    support_size: int
    adapted: bool = Field(description="false: adapting on these ratings"
                          " diverged, so the meta-parameters ranked")
    personal: bool = Field(description=PERSONAL)
    items: list[ScoredItem]

  def positions(items) -> list:
    try:
      return engine.item_positions(items)
    except KeyError as e:
      raise fastapi.HTTPException(404, e.args[0]) from None

  def user_of(text: str):
    try:
      user = engine.parse_user(text)
      service.log.check_user_id(user)
    except ValueError as e:
      raise fastapi.HTTPException(422, str(e)) from None
    return user

  def shown(r: float) -> str:
    # Six digits named 5.0000001 "5", off a scale of 1 to 5.
    return f"{r:g}" if float(f"{r:g}") == r else repr(r)

  def checked(ratings) -> tuple[list, list]:
    items = [i for i, _ in ratings]
    values = [r for _, r in ratings]
    for i, r in ratings:
      if not lo <= r <= hi:
        raise fastapi.HTTPException(
            422, f"rating {shown(r)} of item {i!r} is off the scale {lo:g}"
            f" to {hi:g}")
      if whole and r != math.floor(r):
        raise fastapi.HTTPException(
            422, f"rating {shown(r)} of item {i!r} is not a whole number"
            " (this dataset's ratings are)")
    return items, values

  @contextlib.asynccontextmanager
  async def lifespan(_):
    await service.start()
    yield
    await service.stop()

  # With a token every endpoint but /healthz needs it: the schema too, and
  # no browser pages (they cannot send the token).
  # No redirect of a path with a trailing slash: it was a bare 307 with no
  # JSON error, which a client that follows it then POSTs again.
  app = FastAPI(title="metarec serve", lifespan=lifespan,
                redirect_slashes=False,
                description=__doc__.split("\n\n")[1] if __doc__ else "",
                **({} if token is None else dict(
                    docs_url=None, redoc_url=None, openapi_url=None)))
  # The routes, filled below: a POST to no route is a 404 or 405, not 415.
  app.add_middleware(guards.BodyLimit, max_bytes=max_body,
                     routes=app.router.routes)
  app.add_middleware(guards.BearerGuard, token=token)  # outermost: first
  auth = [Depends(guards.bearer())]
  api = [*auth, Depends(guards.known_query())]  # no query parameters
  if token is not None:

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    async def openapi() -> JSONResponse:
      return JSONResponse(app.openapi())

  @app.exception_handler(RequestValidationError)
  async def _invalid(_, exc):
    return error(*_validation_message(exc))

  @app.exception_handler(StarletteHTTPException)
  async def _http(request, exc):
    message = str(exc.detail)
    # Starlette's own 404 and 405 name neither the request nor the way out.
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404 and message == "Not Found":
      message = f"no such endpoint: {where}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and message == "Method Not Allowed":
      # Of every route of the path (Starlette's header names the first's:
      # GET alone for /healthz, whose HEAD is a route of its own).
      allowed = ", ".join(sorted({
          m for r in request.app.routes if getattr(r, "methods", None)
          and r.matches(request.scope)[0] != Match.NONE for m in r.methods}))
      message = f"{where}: method not allowed (allowed: {allowed})"
      headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
      headers["Allow"] = allowed
    response = error(exc.status_code, message)
    response.headers.update(headers)
    return response

  @app.exception_handler(Exception)
  async def _bug(_, exc):
    # A bug on our side (Starlette still logs its traceback): the client
    # gets the API's error shape, not a text "Internal Server Error".
    return error(500, f"internal error ({type(exc).__name__}): the server"
                 " logged it")

  @app.exception_handler(OSError)
  async def _storage(_, exc):
    # The log could not be written (a full disk...): it was cut back to
    # whole lines and nothing of the batch was learned or acknowledged.
    # A batch's failure was logged once for all its requests.
    if not getattr(exc, "logged", False):
      log.error("a request failed on storage: %s", exc)
    again = ("start the server again (on a new log: restore the removed"
             " one first to keep what it held)"
             if isinstance(exc, interaction_log.LogMoved) else "retry later")
    return error(503, f"storage error ({exc.strerror or exc}): nothing of"
                 f" this request was kept; {again}")

  # What the exported checkpoint's validation fitted (as `eval` reports).
  served = served_values({"model": export.meta_params})

  # HEAD too: `curl -I` and load balancers' checks got a 405. (Its own
  # route, out of the schema: one route of both methods gave both one
  # operation id, and building the schema warned of the duplicate.)
  @app.head("/healthz", include_in_schema=False)
  @app.get("/healthz")
  async def healthz() -> dict:
    return {"status": "ok", "users": export.num_users,
            "items": export.num_items, "sessions": len(engine.sessions),
            "sessions_adapted": engine.sessions.held,
            "kept_rankings": len(engine.rankings),
            "ranking_hits": engine.rankings.hits,
            "batches": service.stats(), "served": served}

  def reply(obj) -> Response:
    # The routes build plain dicts and orjson writes them: pydantic models
    # per item cost more than the rest of a cached answer. The declared
    # response models still document the shapes.
    return Response(orjson.dumps(obj), media_type="application/json")

  def scored(pairs) -> list[dict]:
    if not rates:
      return [{"item": i, "score": s} for i, s in pairs]
    return [{"item": i, "score": s, "rating": min(max(s, lo), hi)}
            for i, s in pairs]

  # `{user:text}`: a user id may hold a '/' (a generic export's ids are
  # any strings; `%2F` reaches the router decoded), which `{user}` never
  # matched, so such a user could not be served or learn (a bare 404),
  # and a line break, which `{user:path}` did not match either.
  @app.get("/v1/users/{user:text}/recommendations",
           dependencies=[*auth, Depends(guards.known_query("k"))],
           response_model=Recommendations)
  async def recommendations(user: Annotated[str, Path(max_length=user_length)],
                            k: Annotated[int, Query(ge=1, le=limits.max_k),
                                         BeforeValidator(_digits)] = 10):
    uid = user_of(user)
    # A kept ranking needs no device: answer it here, not in the batcher.
    # (A user's kept ranking is forgotten before its interaction is
    # acknowledged, so this never answers from an older model.)
    r = engine.kept_reply(uid, k)
    if r is None:
      r = await service.recommend.submit((uid, k))
    return reply({"user": uid, "source": r["source"],
                  "personal": r["personal"], "items": scored(r["items"])})

  @app.post("/v1/predict", dependencies=api, response_model=Predictions)
  async def predict(body: PredictBody):
    user_of(str(body.user))
    r = await service.predict.submit((body.user, positions(body.items)))
    return reply({"user": body.user, "source": r["source"],
                  "personal": r["personal"],
                  "items": scored(zip(body.items, r["scores"]))})

  def support_of(body: InteractionsBody) -> tuple[list, list]:
    """(items, ratings) of a body with `ratings` or, for an implicit
    export, `items`."""
    if body.items is not None and body.ratings is not None:
      raise fastapi.HTTPException(422, "send ratings or items, not both")
    if body.items is not None:
      if rates:
        raise fastapi.HTTPException(
            422, "this export learns from ratings: send {\"ratings\":"
            " [[item, rating], ...]}")
      # An implicit export: each item is a positive, logged with the top of
      # the scale (at or above the export's threshold, so a retrain and a
      # re-export read it as a positive too).
      return list(body.items), [hi] * len(body.items)
    if body.ratings is None:
      raise fastapi.HTTPException(422, "ratings: field required")
    if service.log.format.rating is None:
      # Its file has no rating column: a 1 sent to mean "disliked" was
      # logged as a positive, and 0 refused as off a 1-5 scale the data
      # never had.
      raise fastapi.HTTPException(
          422, "this export's ratings file has no rating column (every"
          " row a positive): send {\"items\": [item, ...]}")
    return checked(body.ratings)

  @app.post("/v1/users/{user:text}/interactions", dependencies=api,
            response_model=Accepted)
  async def interactions(user: Annotated[str, Path(max_length=user_length)],
                         body: InteractionsBody):
    uid = user_of(user)
    items, values = support_of(body)
    r = await service.learn.submit((uid, items, positions(items), values))
    return reply({"user": uid, "accepted": len(items), **r})

  @app.post("/v1/adapt", dependencies=api, response_model=Adapted)
  async def adapt(body: AdaptBody):
    items, values = support_of(body)
    r = await service.adapt.submit((positions(items), values, body.k))
    return reply({"support_size": r["support_size"], "adapted": r["adapted"],
                  "personal": r["personal"], "items": scored(r["items"])})

  return app
