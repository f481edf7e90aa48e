"""`metarec serve`: start-up in a safe order, then uvicorn.

1. read the token file and the export's manifest;
2. lock the log folder (a second server on it stops here, exit 2), bind
   the socket (a port in use is exit 2), then open the export
   (memory-mapped);
3. replay the log, so every acknowledged interaction is served again;
4. compile every bucket's program (`Engine.warm_up`);
5. serve until SIGINT or SIGTERM; the line `serving on http://HOST:PORT`
   on stderr says ready. On either signal uvicorn answers the requests in
   flight and stops; the log says so and the exit status is 0.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import socket
import time

from metarec_jax import atomic, interrupts
from metarec_jax.errors import InputError
from metarec_jax.serve import sizes

log = logging.getLogger("metarec")


@dataclasses.dataclass(frozen=True)
class Options:
  """`metarec serve`'s flags."""

  export: str
  host: str = "127.0.0.1"
  port: int = 8000
  log_dir: str | None = None
  token_file: str | None = None
  max_batch: int = 16
  max_wait_ms: float = 2.0
  max_k: int = 100
  max_items: int = 1000
  max_ratings: int = 1000
  max_body_bytes: int = 1 << 20
  read_timeout_s: float = 30.0
  rank_cache: int = 100_000
  adapted_cache: int = 10_000
  access_log: bool = False


def _bind(host: str, port: int) -> socket.socket:
  try:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
  except OSError as e:  # the name, not the port
    raise InputError(f"cannot resolve {host!r}: {e.strerror or e}",
                     path="--host") from None
  try:
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(info[4])
    sock.listen(2048)
  except OSError as e:
    raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                     path="--port") from None
  return sock


def _refuse_log_in_export(log_dir: str, export: str) -> None:
  """A log in the export folder is deleted by the next `metarec export` to
  it (the README's loop), with every interaction it acknowledged."""
  if atomic.is_inside(log_dir, export):
    raise InputError(f"inside the export folder {export}, which a re-export"
                     " replaces whole (the log with it): give a folder"
                     " outside it", path="--log_dir")


def serve(options: Options) -> int:
  """Runs the server until it is stopped; returns the exit status.

  Raises:
    InputError: a bad flag, export, token file or log, or a locked log
      folder or a port in use.
  """
  # pylint: disable=g-import-not-at-top
  with interrupts.uninterrupted():  # (see the imports under the lock)
    from metarec_jax.serve import guards, interaction_log

  o = options
  if not 0 <= o.max_wait_ms < math.inf:
    # (inf, or nan, held every batched request forever)
    raise InputError(f"must be a finite number >= 0, got {o.max_wait_ms}",
                     path="--max_wait_ms")
  if o.max_body_bytes < 1:
    raise InputError(f"must be >= 1, got {o.max_body_bytes}",
                     path="--max_body_bytes")
  if not 0 < o.read_timeout_s < math.inf:
    raise InputError(f"must be a finite number > 0, got {o.read_timeout_s}",
                     path="--read_timeout_s")
  for name in sizes.MAXIMA:
    if problem := sizes.limit_problem(name, getattr(o, name)):
      raise InputError(problem, path=f"--{name}")
  # With the other flags, before the log folder is made (a bad --port made
  # EXPORT-interactions/ and then stopped).
  if not 0 <= o.port <= 65535:  # the socket layer would wrap it silently
    raise InputError(f"{o.port} is not a port (0 to 65535; 0 picks a free"
                     " one)", path="--port")
  token = guards.read_token(o.token_file) if o.token_file else None
  if o.host not in ("127.0.0.1", "localhost", "::1") and token is None:
    log.warning("listening on %s without --token-file: anyone who reaches"
                " it can read and write", o.host)
  t0 = time.perf_counter()
  # The lock first: a second server on the log stops before any real work.
  fmt, clock = interaction_log.export_format(o.export)
  folder = o.log_dir or interaction_log.default_dir(o.export)
  _refuse_log_in_export(folder, o.export)
  interactions = interaction_log.InteractionLog(folder, fmt, clock=clock)
  try:
    # Bound now (a port in use is exit 2 before any slow work); connections
    # wait in the backlog until the server is ready.
    sock = _bind(o.host, o.port)
    # JAX and the web stack load only now, after the lock; a signal waits
    # for the imports to end (raised inside jaxlib's, 3 stops in 50 at
    # start-up were a segmentation fault).
    with interrupts.uninterrupted():
      import uvicorn
      from metarec_jax import export as export_lib, runtime
      from metarec_jax.serve import app as app_lib
      from metarec_jax.serve import engine as engine_lib
      from metarec_jax.serve import http_protocol
      from metarec_jax.serve import service as service_lib
    cache = runtime.enable_compilation_cache()
    limits = engine_lib.Limits(max_batch=o.max_batch, max_k=o.max_k,
                               max_items=o.max_items,
                               max_ratings=o.max_ratings)
    export = export_lib.load(o.export)
    engine = engine_lib.Engine(export, limits, rank_cache=o.rank_cache,
                               adapted_cache=o.adapted_cache)
    kept = engine.rankings.preload(export)
    if kept:
      log.info("kept the top %d of %d exported users from topk.jsonl",
               export.manifest["top_k"], kept)
    replayed = service_lib.replay(engine, interactions)
    log.info("replayed %d logged ratings of %d users from %s (the %d most"
             " recent adapted; the others when first asked for)",
             replayed["ratings"], replayed["users"], interactions.path,
             replayed["adapted"])
    t1 = time.perf_counter()
    log.info("compiling %d bucket shapes before serving (users %s, predict"
             " items %s, support %s; persistent compilation cache: %s)",
             engine.shapes, engine.user_sizes, engine.item_sizes, engine.support_widths,
             cache or "off")
    shapes = engine.warm_up()
    log.info("compiled %d bucket shapes in %.1f s (users %s, predict items"
             " %s, support %s, top %d)", shapes, time.perf_counter() - t1,
             engine.user_sizes, engine.item_sizes, engine.support_widths,
             engine.k)
    service = service_lib.Service(engine, interactions,
                                  max_wait=o.max_wait_ms / 1e3)
    with interrupts.uninterrupted():  # (pydantic turned one into its own
      # SchemaError, a traceback instead of the stop)
      app = app_lib.create_app(service, token=token,
                               max_body=o.max_body_bytes)
    host, port = sock.getsockname()[:2]
    protocol = type("Protocol", (http_protocol.JsonErrorsProtocol,),
                    {"read_seconds": o.read_timeout_s})
    config = uvicorn.Config(app, loop="uvloop", http=protocol,
                            access_log=o.access_log, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    log.info("export %s: %d users, %d items; log %s; ready in %.1f s",
             o.export, export.num_users, export.num_items, interactions.path,
             time.perf_counter() - t0)
    log.info("serving on http://%s:%d (%s)", host, port,
             "docs at /docs" if token is None
             else "schema at /openapi.json, with the token")
    try:
      server.run(sockets=[sock])
    except (interrupts.Terminated, KeyboardInterrupt) as e:
      # uvicorn has shut down gracefully (requests in flight answered) and
      # raised the signal again: a stop asked for, not a failure.
      log.info("stopped by %s: every acknowledged interaction is in %s",
               "SIGINT" if isinstance(e, KeyboardInterrupt) else e,
               interactions.path)
  except BaseException:
    # A refused start (a damaged export, a port in use...) or a signal
    # during it: nothing new left on disk (the log only if it holds any).
    interactions.discard()
    raise
  interactions.close()
  return 0
