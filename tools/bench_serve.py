"""Load benchmark of `metarec serve` with a real HTTP client on loopback.

Starts `metarec serve --export=DIR` as a real process on a free port (with
a fresh interaction log in a temporary folder, so the benchmark's ratings
never reach the export's own log), or uses `--url` of a running server,
then runs closed-loop phases of `--clients` concurrent aiohttp clients
(aiohttp's client costs a fraction of httpx's CPU per request, which
matters when client and server share two cores), each bounded by
`--seconds` and `--requests`:

    recommend    GET /v1/users/U/recommendations?k=10 (random exported users)
    predict      POST /v1/predict, `--predict_items` random items each
    interaction  POST /v1/users/U/interactions, one whole-star rating each
    mixed        the three at random, equally often

Besides requests/s and latency, each phase reports the CPU milliseconds
per request of the client and (when started here) of the server process:
on a machine shared with other work, latency says how much CPU the others
left; CPU per request is what the server costs.

Prints, as the last line of stdout, one JSON object:

    {"clients": 16, "export": .., "users": .., "items": ..,
     "phases": {"recommend": {"recommend": {"requests": .., "errors": ..,
                "rps": .., "p50_ms": .., "p95_ms": .., "p99_ms": ..}}, ...},
     "server_batches": <the server's /healthz batch counts>}

Usage (from the repository root):

    python tools/bench_serve.py --export=/tmp/h19/export
    python tools/bench_serve.py --export=DIR --clients=16 --seconds=15
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time

from absl import flags
import aiohttp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string("export", None, "The export folder (its ids drive the"
                    " requests).", required=True)
flags.DEFINE_string("url", None, "A running server (default: start one).")
flags.DEFINE_string("token_file", None, "Bearer token file of the server.")
flags.DEFINE_integer("clients", 16, "Concurrent clients.", lower_bound=1)
flags.DEFINE_float("seconds", 15.0, "Longest run of a phase.")
flags.DEFINE_integer("requests", 20000, "Most requests of a phase.",
                     lower_bound=1)
flags.DEFINE_float("warmup_seconds", 2.0, "Untimed load before each phase.")
flags.DEFINE_integer("predict_items", 20, "Items per predict request.")
flags.DEFINE_integer("k", 10, "Recommendations per request.", lower_bound=1)
flags.DEFINE_list("phases", ["recommend", "predict", "interaction", "mixed"],
                  "Phases to run, in order.")
flags.DEFINE_list("serve_flags", [], "Extra `metarec serve` flags.")
flags.DEFINE_integer("seed", 0, "Seed of the request generator.")

KINDS = ("recommend", "predict", "interaction")


def start_server(export: str, log_dir: str, extra: list[str]):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = os.pathsep.join(
      [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  proc = subprocess.Popen(
      [sys.executable, "-m", "metarec_jax.cli", "serve", f"--export={export}",
       "--port=0", f"--log_dir={log_dir}", *extra],
      stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
  for line in proc.stderr:
    sys.stderr.write(line)
    m = re.search(r"serving on (http://\S+)", line)
    if m:
      return proc, m.group(1)
  raise SystemExit(f"the server exited ({proc.wait()}) before serving")


class Load:
  """Request generator over the export's ids."""

  def __init__(self, export: str, seed: int):
    self.users = np.load(os.path.join(export, "users.npy"), mmap_mode="r")
    self.items = np.load(os.path.join(export, "items.npy"), mmap_mode="r")
    self.rng = random.Random(seed)
    with open(os.path.join(export, "manifest.json")) as f:
      m = json.load(f)
    self.lo, self.hi = int(m["rating_min"]), int(m["rating_max"])

  def user(self):
    return self.users[self.rng.randrange(len(self.users))].item()

  def item(self):
    return self.items[self.rng.randrange(len(self.items))].item()

  def request(self, kind: str):
    if kind == "recommend":
      return "GET", f"/v1/users/{self.user()}/recommendations?k={FLAGS.k}", None
    if kind == "predict":
      return "POST", "/v1/predict", {
          "user": self.user(),
          "items": [self.item() for _ in range(FLAGS.predict_items)]}
    return "POST", f"/v1/users/{self.user()}/interactions", {
        "ratings": [[self.item(), self.rng.randint(self.lo, self.hi)]]}


def cpu_seconds(server_pid: int | None) -> dict:
  """CPU seconds (user + system) used so far by this client process and by
  the server process: on a shared machine, the cost of a request that does
  not depend on how much of the CPU the others leave us."""
  me = resource.getrusage(resource.RUSAGE_SELF)
  server = None
  if server_pid is not None:
    with open(f"/proc/{server_pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    server = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
  return {"client": me.ru_utime + me.ru_stime, "server": server}


async def run_phase(session: aiohttp.ClientSession, load: Load,
                    kinds: tuple[str, ...], *, seconds: float,
                    max_requests: int, record: bool,
                    server_pid: int | None = None) -> dict:
  latencies = {k: [] for k in kinds}
  errors = {k: 0 for k in kinds}
  sent = 0
  deadline = time.perf_counter() + seconds
  json_type = {"Content-Type": "application/json"}

  async def worker():
    nonlocal sent
    while sent < max_requests and time.perf_counter() < deadline:
      sent += 1
      kind = load.rng.choice(kinds)
      method, path, body = load.request(kind)
      data = None if body is None else json.dumps(body).encode()
      t0 = time.perf_counter()
      try:
        async with session.request(method, path, data=data,
                                   headers=json_type if data else None) as r:
          await r.read()
          ok = r.status == 200
      except aiohttp.ClientError:
        ok = False
      if ok:
        latencies[kind].append(time.perf_counter() - t0)
      else:
        errors[kind] += 1

  t0, cpu0 = time.perf_counter(), cpu_seconds(server_pid)
  await asyncio.gather(*(worker() for _ in range(FLAGS.clients)))
  wall = time.perf_counter() - t0
  cpu1 = cpu_seconds(server_pid)
  if not record:
    return {}
  done = max(1, sum(map(len, latencies.values())))
  out = {"cpu_ms_per_request": {
      side: round((cpu1[side] - cpu0[side]) * 1e3 / done, 3)
      for side in cpu0 if cpu0[side] is not None}}
  for kind in kinds:
    ms = np.asarray(latencies[kind]) * 1e3
    out[kind] = {
        "requests": len(ms), "errors": errors[kind],
        "rps": round(len(ms) / wall, 1),
        **{f"p{q}_ms": (round(float(np.percentile(ms, q)), 2) if len(ms)
                        else None) for q in (50, 95, 99)}}
  out["seconds"] = round(wall, 2)
  return out


async def bench(url: str, load: Load, token: str | None,
                server_pid: int | None) -> dict:
  headers = {"Authorization": f"Bearer {token}"} if token else {}
  connector = aiohttp.TCPConnector(limit=FLAGS.clients)
  async with aiohttp.ClientSession(
      base_url=url, headers=headers, connector=connector,
      timeout=aiohttp.ClientTimeout(total=30)) as session:
    phases = {}
    for phase in FLAGS.phases:
      kinds = KINDS if phase == "mixed" else (phase,)
      if phase not in KINDS + ("mixed",):
        raise SystemExit(f"unknown phase {phase!r}")
      await run_phase(session, load, kinds, seconds=FLAGS.warmup_seconds,
                      max_requests=FLAGS.requests, record=False)
      phases[phase] = await run_phase(
          session, load, kinds, seconds=FLAGS.seconds,
          max_requests=FLAGS.requests, record=True, server_pid=server_pid)
      print(phase, json.dumps(phases[phase]), file=sys.stderr)
    async with session.get("/healthz") as r:
      health = await r.json()
  return {"phases": phases, "server_batches": health.get("batches"),
          "ranking_hits": health.get("ranking_hits")}


def main(argv):
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  if toolkit.help_asked(argv[1:], __doc__, FLAGS):
    return 0
  try:
    argv = FLAGS(argv)
  except flags.Error as e:
    raise InputError(str(e).splitlines()[0]) from None
  if len(argv) > 1:
    raise InputError(f"unexpected argument {argv[1]!r}")
  bad = sorted(set(FLAGS.phases) - {"recommend", "predict", "interaction",
                                    "mixed"})
  if bad:  # before a server starts and compiles
    raise InputError(f"--phases: unknown {', '.join(bad)}")
  # Client libraries may log every request at INFO (absl turns INFO on):
  # that would time the logging, not the server.
  logging.getLogger().setLevel(logging.WARNING)
  token = None
  if FLAGS.token_file:
    with open(FLAGS.token_file) as f:
      token = f.read().strip()
  load = Load(FLAGS.export, FLAGS.seed)
  proc = None
  with tempfile.TemporaryDirectory(prefix="bench-serve-log-") as log_dir:
    url = FLAGS.url
    if url is None:
      extra = list(FLAGS.serve_flags)
      if FLAGS.token_file:
        extra.append(f"--token-file={FLAGS.token_file}")
      proc, url = start_server(FLAGS.export, log_dir, extra)
    try:
      result = asyncio.run(bench(url, load, token,
                                 proc.pid if proc is not None else None))
    finally:
      if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)
  result = {"clients": FLAGS.clients, "export": os.path.abspath(FLAGS.export),
            "users": len(load.users), "items": len(load.items),
            "predict_items": FLAGS.predict_items, "k": FLAGS.k,
            "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            **result}
  print(json.dumps(result))


if __name__ == "__main__":
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  toolkit.run(lambda: main(sys.argv))
