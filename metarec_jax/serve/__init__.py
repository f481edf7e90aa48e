"""`metarec serve`: an export behind an HTTP API that keeps learning.

    metarec serve --export=DIR [--host=127.0.0.1] [--port=8000]
                  [--log_dir=DIR-interactions] [--token-file=FILE]

Modules, in the order a request meets them: `guards` (bearer token, body
limit), `app` (FastAPI routes and schemas), `service` (micro-batchers, the
device and log threads, replay), `batcher` (the asyncio micro-batcher),
`interaction_log` (the durable, locked log in the export's input format),
`engine` (users' models and the padded, batched device calls of
`export.Export`), `server` (start-up order and uvicorn).
"""

from metarec_jax.serve.server import Options, serve

__all__ = ["Options", "serve"]
