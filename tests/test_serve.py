"""`metarec serve`: a real server process, a real HTTP client (httpx).

One export of the tiny ML-1M run (real MovieLens users, `::` lines) is
served by one module-wide server with a token; the kill -9 and second-server
tests start their own processes on the same export.
"""

import asyncio
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.parse

import httpx
import numpy as np
import pytest

from cli_run import assert_one_line_error, metarec_here
from conftest import ROOT, config_path, count_compiles, has_training_ratings
from metarec_jax import export as export_lib
from metarec_jax.serve import engine as engine_lib
from metarec_jax.serve import sizes
from metarec_jax.serve.batcher import MicroBatcher
from procs import env_with, wait_for

TOKEN = "s3cret-token"
SERVE_FLAGS = ("--max_batch=2", "--max_items=16", "--max_ratings=40",
               "--max_k=20", "--max_body_bytes=4096", "--max_wait_ms=20")


@pytest.fixture(scope="module")
def exported(ml1m_tiny_run, tmp_path_factory):
  """(export folder, work directory, ratings file)."""
  workdir, ratings = ml1m_tiny_run
  out = str(tmp_path_factory.mktemp("serve") / "export")
  export_lib.export_workdir(workdir, ratings, out, top_k=10)
  return out, workdir, ratings


class Server:
  """A `metarec serve` process; `url` once it says it is serving."""

  def __init__(self, export, log_dir, *flags, stderr_path):
    self.stderr_path = stderr_path
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "metarec_jax.cli", "serve",
         f"--export={export}", "--port=0", f"--log_dir={log_dir}",
         *SERVE_FLAGS, *flags], stdout=subprocess.DEVNULL,
        stderr=open(stderr_path, "w"), cwd=ROOT, env=env_with())
    self.url = None

  def stderr(self) -> str:
    with open(self.stderr_path) as f:
      return f.read()

  def wait_ready(self, timeout=300):
    m = wait_for(lambda: re.search(r"serving on (http://\S+)", self.stderr()),
                 timeout=timeout, interval=0.1, proc=self.proc)
    self.url = m.group(1)
    wait_for(lambda: self._healthy(), timeout=60, interval=0.05,
             proc=self.proc)
    return self

  def _healthy(self):
    try:
      return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
      return False

  def stop(self, sig=signal.SIGTERM):
    if self.proc.poll() is None:
      self.proc.send_signal(sig)
      self.proc.wait(timeout=60)


READ_TIMEOUT_S = 4  # short, for the test of clients that stop sending


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("serve_main")
  token_file = tmp / "token"
  token_file.write_text(TOKEN + "\n")
  s = Server(exported[0], tmp / "log", f"--token-file={token_file}",
             f"--read_timeout_s={READ_TIMEOUT_S}",
             stderr_path=tmp / "stderr").wait_ready()
  s.log_dir = tmp / "log"
  yield s
  s.stop()


@pytest.fixture
def client(server):
  with httpx.Client(base_url=server.url, timeout=60,
                    headers={"Authorization": f"Bearer {TOKEN}"}) as c:
    yield c


def top_items(client, user, k=10):
  r = client.get(f"/v1/users/{user}/recommendations", params={"k": k})
  assert r.status_code == 200, r.text
  return r.json()


def test_interaction_changes_the_next_recommendations(client, exported):
  user = int(np.load(os.path.join(exported[0], "users.npy"))[0])
  before = top_items(client, user)
  assert before["source"] == "export" and len(before["items"]) == 10
  scores = [i["score"] for i in before["items"]]
  assert scores == sorted(scores, reverse=True)
  # The user hates what we recommended: rate the top 3 with one star.
  hated = [i["item"] for i in before["items"][:3]]
  r = client.post(f"/v1/users/{user}/interactions",
                  json={"ratings": [[i, 1] for i in hated]})
  assert r.status_code == 200, r.text
  assert r.json()["accepted"] == 3
  after = top_items(client, user)
  assert after["source"] == "adapted"
  assert after["items"] != before["items"]
  assert not set(hated) & {i["item"] for i in after["items"]}  # rated now
  # predict sees the same adapted model.
  r = client.post("/v1/predict", json={"user": user, "items": hated})
  assert r.status_code == 200 and r.json()["source"] == "adapted"


def test_a_user_the_export_never_had_learns(client, exported):
  user = 987654
  assert top_items(client, user)["source"] == "meta"
  r = client.post(f"/v1/users/{user}/interactions",
                  json={"ratings": [[1193, 5], [661, 2]]})
  assert r.status_code == 200, r.text
  assert r.json()["support_size"] == 2
  # Whether the ratings count is the validated minimum's call, for films
  # with training ratings (the new-item minimum leaves those alone;
  # tests/test_uncounted_users.py holds the minimum at 3).
  assert has_training_ratings(export_lib.load(exported[0]), [1193, 661])
  least = client.get("/healthz").json()["served"]["warm_min_support"]
  assert r.json()["personal"] is (2 >= least)
  after = top_items(client, user, k=20)
  assert after["source"] == "adapted"
  assert not {1193, 661} & {i["item"] for i in after["items"]}
  r = client.post("/v1/adapt", json={"ratings": [[1193, 5]], "k": 3})
  assert r.status_code == 200 and len(r.json()["items"]) == 3
  assert r.json()["personal"] is (1 >= least)


def test_bad_requests_get_a_4xx_and_the_server_stays_healthy(client, server):
  log_file = server.log_dir / "interactions.dat"
  logged = log_file.read_bytes() if log_file.exists() else b""
  post = lambda path, **kw: client.post(path, **kw)
  path = "/v1/users/130/interactions"
  cases = {
      "malformed JSON": (post(path, content=b"{bad", headers={
          "content-type": "application/json"}), 400, "malformed JSON"),
      "not JSON": (post(path, content=b"ratings=1"), 415, "Content-Type"),
      # Was a 400 "There was an error parsing the body" (FastAPI's).
      "not UTF-8": (post(path, content=b'{"ratings": [[1193, 3]], "\xff": 1}',
                         headers={"content-type": "application/json"}),
                    400, "malformed JSON: not UTF-8 (byte 0xff at offset 26)"),
      # The first was dropped silently (json keeps the last).
      "a field twice": (post(path, content=b'{"ratings": [[1193, 1]],'
                             b' "ratings": [[1193, 3]]}', headers={
                                 "content-type": "application/json"}),
                        422, "ratings: given twice in one JSON object"),
      # JSON's name as a prefix only: FastAPI reads the body as bytes.
      "another media type": (post(path, content=b'{"ratings": [[1193, 3]]}',
                                  headers={"content-type":
                                           "application/jsonl"}),
                             415, "Content-Type"),
      "NaN rating": (post(path, content=b'{"ratings": [[1193, NaN]]}',
                          headers={"content-type": "application/json"}),
                     422, "finite"),
      "off the scale": (post(path, json={"ratings": [[1193, 7]]}), 422,
                        "off the scale 1 to 5"),
      "half a star": (post(path, json={"ratings": [[1193, 3.5]]}), 422,
                      "whole number"),
      # Six digits said "rating 5 ... is off the scale 1 to 5".
      "just off the scale": (post(path, json={"ratings": [[1193, 5.0000001]]}),
                             422, "rating 5.0000001 of item 1193 is off"),
      "just not whole": (post(path, json={"ratings": [[1193, 3.0000001]]}),
                         422, "rating 3.0000001 of item 1193 is not a whole"),
      "unknown item": (post(path, json={"ratings": [[99999999, 3]]}), 404,
                       "99999999"),
      "item as text": (post(path, json={"ratings": [["1193", 3]]}), 422,
                       "ratings.0.0"),
      "rating as text": (post(path, json={"ratings": [[1193, "3"]]}), 422,
                         "ratings.0.1"),
      "no ratings": (post(path, json={"ratings": []}), 422, "at least 1"),
      "unknown field": (post(path, json={"ratings": [[1193, 3]], "x": 1}),
                        422, "x: Extra inputs"),
      "too many ratings": (post(path, json={"ratings": [[1193, 3]] * 41}),
                           422, "at most 40"),
      "body too large": (post(path, content=b"[" + b" " * 5000 + b"]",
                              headers={"content-type": "application/json"}),
                         413, "over 4096 bytes"),
      "user not an integer": (client.get("/v1/users/abc/recommendations"),
                              422, "not an integer"),
      # Python's int() reads these as users 130 and 3: another user's model
      # would learn from the interaction.
      "user with a leading zero": (post("/v1/users/0130/interactions",
                                        json={"ratings": [[1193, 3]]}),
                                   422, "not an integer"),
      "user in other digits": (post("/v1/users/%D9%A3/interactions",
                                    json={"ratings": [[1193, 3]]}),
                               422, "not an integer"),
      "user with a plus or space": (client.get(
          "/v1/users/%2B130/recommendations"), 422, "not an integer"),
      # A '/' in a user id (any string is one, in a generic export) reached
      # no route: a bare 404 "Not Found", and such a user was never served.
      "user with a slash": (client.get("/v1/users/1%2F30/recommendations"),
                            422, "user id '1/30' is not an integer"),
      "user with a slash learns": (post("/v1/users/1%2F30/interactions",
                                        json={"ratings": [[1193, 3]]}),
                                   422, "user id '1/30' is not an integer"),
      # A line break reached no route either (`{user:path}` stops there).
      "user with a line break": (post("/v1/users/1%0A/interactions",
                                      json={"ratings": [[1193, 3]]}),
                                 422, "user id '1\\n' is not an integer"),
      "k too large": (client.get("/v1/users/130/recommendations?k=21"), 422,
                      "query.k"),
      # Read as 10, 5 and 5 by a lax int parse, and answered.
      "k with an underscore": (client.get(
          "/v1/users/130/recommendations?k=1_0"), 422, "written in digits"),
      "k with a sign": (client.get("/v1/users/130/recommendations?k=%2B5"),
                        422, "written in digits"),
      "k as a decimal": (client.get("/v1/users/130/recommendations?k=5.0"),
                         422, "query.k: must be a whole number written in"
                         " digits"),
      "k negative": (client.get("/v1/users/130/recommendations?k=-1"), 422,
                     "greater than or equal to 1"),
      # A typo was answered with the default 10, a repeat with the last.
      "k misspelt": (client.get("/v1/users/130/recommendations?kk=5"), 422,
                     "query parameter 'kk' is not one this route takes (k)"),
      "k twice": (client.get("/v1/users/130/recommendations?k=5&k=6"), 422,
                  "query parameter 'k' given 2 times"),
      "a query where none is taken": (post("/v1/predict?k=3", json={
          "user": 130, "items": [1193]}), 422, "(it takes none)"),
      "too many items": (post("/v1/predict", json={
          "user": 130, "items": [1193] * 17}), 422, "at most 16"),
      "implicit items": (post(path, json={"items": [1193]}), 422,
                         "learns from ratings"),
      "k as a bool": (post("/v1/adapt", json={"ratings": [[1193, 3]],
                                              "k": True}), 422, "k:"),
      "k as text": (post("/v1/adapt", json={"ratings": [[1193, 3]],
                                            "k": " 7 "}), 422, "k:"),
      # A body not declared JSON, to no route or a route of another
      # method: the route's 404 or 405, not a 415 about the body.
      # (Starlette's "Not Found" and "Method Not Allowed" named neither
      # the request nor the methods allowed.)
      "no such route": (post("/v1/nothing", content=b"x"), 404,
                        "no such endpoint: POST /v1/nothing"),
      # A bare 307 without the JSON error before.
      "a trailing slash": (client.get("/healthz/"), 404,
                           "no such endpoint: GET /healthz/"),
      "not a POST route": (post("/healthz", content=b"x"), 405,
                           "POST /healthz: method not allowed (allowed:"
                           " GET, HEAD)"),
  }
  for name, (r, status, words) in cases.items():
    assert r.status_code == status, (name, r.status_code, r.text)
    message = r.json()["error"]
    assert words in message and "\n" not in message, (name, message)
  assert cases["not a POST route"][0].headers["allow"] == "GET, HEAD"
  health = client.get("/healthz").json()
  assert health["status"] == "ok"
  assert client.head("/healthz").status_code == 200  # `curl -I`: was 405
  # What it serves, as `eval` reports it for the same checkpoint.
  assert health["served"]["new_item_min_support"] in (1.0, 2.0, 3.0)
  assert health["served"]["warm_min_support"] in (1.0, 2.0, 3.0)
  assert set(health["served"]) >= {"share_existing_items", "new_item_prior"}
  assert top_items(client, 130)["items"]
  # Nothing refused reached the log.
  assert (log_file.read_bytes() if log_file.exists() else b"") == logged
  # Media types are case-insensitive (RFC 9110).
  r = post("/v1/adapt", content=b'{"ratings": [[1193, 3]], "k": 2}',
           headers={"content-type": "Application/JSON; charset=UTF-8"})
  assert r.status_code == 200, r.text


def test_a_request_that_is_not_http_gets_the_json_error_shape(server,
                                                              client):
  """uvicorn answers what it cannot parse itself: that 400 was plain text
  ("Invalid HTTP request received."), every other error JSON."""
  import json  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top
  host, port = server.url.removeprefix("http://").split(":")
  for raw in (b"GARBAGE\r\n\r\n",
              b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc"
              b"\r\n\r\n"):
    with socket.create_connection((host, int(port)), timeout=30) as sock:
      sock.sendall(raw)
      reply = b""
      while chunk := sock.recv(4096):  # the server closes the connection
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), reply
    assert b"content-type: application/json" in head.lower(), reply
    assert json.loads(body) == {
        "error": "malformed HTTP request: Invalid HTTP request received."}
  assert client.get("/healthz").json()["status"] == "ok"


def _raw_exchange(server, chunks, pause=0.0):
  """Sends `chunks` on one connection (stopping where the server closes
  it), waits `pause` s, and returns (reply, seconds until it closed)."""
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  host, port = server.url.removeprefix("http://").split(":")
  with socket.create_connection((host, int(port)), timeout=60) as sock:
    t0 = time.perf_counter()
    try:
      for chunk in chunks:
        sock.sendall(chunk)
    except OSError:  # closed by the server on its refusal
      pass
    time.sleep(pause)
    reply = b""
    try:
      while chunk := sock.recv(65536):
        reply += chunk
    except ConnectionResetError:
      pass
    return reply, time.perf_counter() - t0


@pytest.mark.parametrize("what, chunks", [
    ("nothing", []),
    ("half a head", [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b"]),
    ("half a body", [b"POST /v1/users/u/interactions HTTP/1.1\r\nHost: x"
                     b"\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                     b"Content-Length: 100\r\n\r\n{\"ratings\""])])
def test_a_client_that_stops_sending_is_closed_with_a_408(server, client,
                                                         what, chunks):
  """Connections that sent half a request, or nothing, stayed open for
  good: twenty thousand of them and every client was reset."""
  import json  # pylint: disable=g-import-not-at-top
  reply, seconds = _raw_exchange(server, chunks)
  head, _, body = reply.partition(b"\r\n\r\n")
  assert head.startswith(b"HTTP/1.1 408 "), (what, reply)
  assert "did not arrive within 4 s" in json.loads(body)["error"]
  assert READ_TIMEOUT_S - 0.5 < seconds < READ_TIMEOUT_S + 20, seconds
  assert client.get("/healthz").json()["status"] == "ok"


def test_a_client_that_half_closes_after_its_request_gets_the_answer(
    server):
  """The server closed on the client's EOF: the interaction was learned
  and logged, and the client got no answer to tell it so."""
  import socket  # pylint: disable=g-import-not-at-top
  body = b'{"ratings": [[2858, 4]]}'
  host, port = server.url.removeprefix("http://").split(":")
  with socket.create_connection((host, int(port)), timeout=60) as sock:
    sock.sendall(b"POST /v1/users/424/interactions HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d"
                 b"\r\nConnection: close\r\n\r\n" % len(body) + body)
    sock.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := sock.recv(65536):
      reply += chunk
  assert reply.startswith(b"HTTP/1.1 200 "), reply


def test_a_head_over_its_bound_is_a_431(server, client):
  """A 300 MiB header was held whole in memory (+396 MB RSS), then
  answered 200."""
  import json  # pylint: disable=g-import-not-at-top
  chunks = [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: "]
  chunks += [b"a" * (1 << 18)] * 8  # 2 MiB, never finished
  reply, _ = _raw_exchange(server, chunks)
  head, _, body = reply.partition(b"\r\n\r\n")
  assert head.startswith(b"HTTP/1.1 431 "), reply[:200]
  assert json.loads(body) == {
      "error": "the request's line and headers exceed 1048576 bytes"}
  # A long but ordinary head passes.
  r = client.get("/healthz", headers={"X-A": "a" * 20000})
  assert r.status_code == 200


def test_the_token_is_required_except_for_healthz(server):
  assert httpx.get(server.url + "/healthz").status_code == 200
  for headers in ({}, {"Authorization": "Bearer wrong"},
                  {"Authorization": TOKEN}):
    r = httpx.get(server.url + "/v1/users/130/recommendations",
                  headers=headers)
    assert r.status_code == 401, r.text
    assert "bearer token" in r.json()["error"]
    r = httpx.post(server.url + "/v1/users/130/interactions",
                   json={"ratings": [[1193, 4]]}, headers=headers)
    assert r.status_code == 401
    # Before the body is read: a malformed one is a 401 too.
    r = httpx.post(server.url + "/v1/users/130/interactions",
                   content=b"{bad", headers={**headers,
                                             "content-type": "text/plain"})
    assert r.status_code == 401, r.text
    # The schema too; the browser pages, which cannot send it, are off.
    assert httpx.get(server.url + "/openapi.json",
                     headers=headers).status_code == 401
  for page in ("/docs", "/redoc"):
    assert httpx.get(server.url + page).status_code == 401
    assert httpx.get(server.url + page, headers={
        "Authorization": f"Bearer {TOKEN}"}).status_code == 404
  r = httpx.get(server.url + "/openapi.json",
                headers={"Authorization": f"Bearer {TOKEN}"})
  assert r.status_code == 200 and "/v1/adapt" in r.json()["paths"]
  # One operation per route and method: GET and HEAD /healthz shared one
  # id, and building the schema wrote a UserWarning into the server's log.
  assert "Warning" not in server.stderr()
  assert "head" not in r.json()["paths"]["/healthz"]
  # k's limits, as JSON Schema words them (a validator before `Query`
  # gave them as pydantic's `ge`/`le`, which no client reads).
  (k,) = [p["schema"] for p in r.json()["paths"][
      "/v1/users/{user}/recommendations"]["get"]["parameters"]
          if p["name"] == "k"]
  assert k["minimum"] == 1 and k["maximum"] >= 1 and "ge" not in k


def test_a_second_server_on_the_log_or_port_exits_2(server, exported, tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "metarec_jax.cli", "serve",
       f"--export={exported[0]}", "--port=0", f"--log_dir={server.log_dir}"],
      capture_output=True, text=True, cwd=ROOT, env=env_with(), timeout=300)
  assert out.returncode == 2, out.stderr
  assert "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert "locked by another server" in last and str(server.log_dir) in last
  port = server.url.rsplit(":", 1)[1]
  out = subprocess.run(
      [sys.executable, "-m", "metarec_jax.cli", "serve",
       f"--export={exported[0]}", f"--port={port}",
       f"--log_dir={tmp_path / 'other'}"],
      capture_output=True, text=True, cwd=ROOT, env=env_with(), timeout=300)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert "Address already in use" in out.stderr.strip().splitlines()[-1]
  out = subprocess.run(
      [sys.executable, "-m", "metarec_jax.cli", "serve",
       f"--export={exported[0]}", "--port=70000",
       f"--log_dir={tmp_path / 'other'}"],
      capture_output=True, text=True, cwd=ROOT, env=env_with(), timeout=300)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert "70000 is not a port" in out.stderr.strip().splitlines()[-1]


def test_a_log_inside_the_export_is_refused(exported, tmp_path):
  """The next `metarec export` to that folder replaced it whole, deleting
  the log and every interaction it had acknowledged."""
  for log_dir in (exported[0], os.path.join(exported[0], "log")):
    assert_one_line_error(metarec_here(
        "serve", f"--export={exported[0]}", "--port=0",
        f"--log_dir={log_dir}"), f"--log_dir: inside the export folder"
        f" {exported[0]}, which a re-export replaces whole")
  assert not os.path.exists(os.path.join(exported[0], "log"))


@pytest.mark.parametrize("flag, message", [
    # inf (or nan) held every batched request forever; a host that does
    # not resolve was called a --port error.
    ("--max_wait_ms=inf", "--max_wait_ms: must be a finite number >= 0,"
     " got inf"),
    ("--max_wait_ms=nan", "--max_wait_ms: must be a finite number >= 0"),
    # Named with --max_wait_ms, which was fine.
    ("--max_body_bytes=0", "--max_body_bytes: must be >= 1, got 0"),
    ("--read_timeout_s=0", "--read_timeout_s: must be a finite number > 0,"
     " got 0.0"),
    ("--host=999.1.1.1", "--host: cannot resolve '999.1.1.1'"),
    # Refused only after the log folder was made.
    ("--port=70000", "--port: 70000 is not a port"),
    # Every power of two up to it was compiled: 7.5 minutes, 10 GB, no
    # server.
    ("--max_batch=1000000000", "--max_batch: must be 1 to 4,096, got"
     " 1000000000"),
    ("--max_k=0", "--max_k: must be 1 to 10,000, got 0"),
    # Served as 0 (no cache), without a word.
    ("--rank_cache=-1", "flag --rank_cache=-1: -1 is not a non-negative"
     " integer"),
])
def test_serve_names_a_bad_flag(exported, tmp_path, flag, message):
  assert_one_line_error(metarec_here(
      "serve", f"--export={exported[0]}", "--port=0",
      f"--log_dir={tmp_path / 'log'}", flag), message)
  if flag.startswith("--port"):
    assert not (tmp_path / "log").exists()


@pytest.mark.parametrize("manifest, message", [
    (None, "not a metarec export (no manifest.json)"),
    (b'{"format": "metarec-export", "rat', "manifest.json: unreadable manifest"),
    (b"[]", "manifest.json: not a metarec export manifest")])
def test_serve_names_a_damaged_manifest(tmp_path, manifest, message):
  """A truncated manifest is a damaged export, named as `export.load`
  names it (serve called it "not a metarec export" of the folder)."""
  folder = tmp_path / "export"
  folder.mkdir()
  if manifest is not None:
    (folder / "manifest.json").write_bytes(manifest)
  assert_one_line_error(metarec_here(
      "serve", f"--export={folder}", "--port=0",
      f"--log_dir={tmp_path / 'log'}"), message)


def test_a_refused_start_leaves_nothing_new_on_disk(exported, tmp_path):
  """A damaged export is refused after the log folder is locked: the
  folder (and any folder above it that the start made) is removed again,
  as is a lock or log file it made in a folder that was there; a log that
  was there is left as it was. (An empty EXPORT-interactions/ with a lock
  and an empty log was left behind.)"""
  import shutil  # pylint: disable=g-import-not-at-top
  bad = tmp_path / "export"
  shutil.copytree(exported[0], bad)
  with open(bad / "params" / "adapted" / "base_bias.npy", "r+b") as f:
    f.truncate(100)
  assert_one_line_error(metarec_here("serve", f"--export={bad}", "--port=0"),
                        "base_bias.npy: 100 bytes where the manifest")
  shutil.copy(os.path.join(exported[0], "params", "adapted", "base_bias.npy"),
              bad / "params" / "adapted")
  (bad / "users.npy").unlink()
  assert_one_line_error(metarec_here(
      "serve", f"--export={bad}", "--port=0",
      f"--log_dir={tmp_path / 'a' / 'b' / 'log'}"), "users.npy: listed")
  assert sorted(os.listdir(tmp_path)) == ["export"]
  kept = tmp_path / "kept"
  kept.mkdir()
  (kept / "interactions.dat").write_text("7::1193::4\n")
  assert_one_line_error(metarec_here(
      "serve", f"--export={bad}", "--port=0", f"--log_dir={kept}"),
                        "users.npy: listed")
  assert os.listdir(kept) == ["interactions.dat"]
  assert (kept / "interactions.dat").read_text() == "7::1193::4\n"


def test_kill_9_loses_no_acknowledged_interaction(exported, tmp_path):
  log_dir = tmp_path / "log"
  s = Server(exported[0], log_dir, stderr_path=tmp_path / "e1").wait_ready()
  items = np.load(os.path.join(exported[0], "items.npy"))[:200].tolist()
  acked, stop = [], threading.Event()

  async def stream(worker):
    async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
      n = 0
      while not stop.is_set():
        user, item = 500000 + worker, items[n % len(items)]
        rating = 1 + (n + worker) % 5
        n += 1
        try:
          r = await c.post(f"/v1/users/{user}/interactions",
                           json={"ratings": [[item, rating]]})
        except httpx.HTTPError:
          return  # the server died under us: unacknowledged
        if r.status_code == 200:
          acked.append((user, item, rating))

  thread = threading.Thread(target=lambda: asyncio.run(_gather(stream, 4)))
  thread.start()
  wait_for(lambda: len(acked) >= 30, timeout=120, interval=0.01)
  s.stop(signal.SIGKILL)  # mid-stream
  stop.set()
  thread.join(timeout=60)
  assert s.proc.returncode == -signal.SIGKILL
  s2 = Server(exported[0], log_dir, stderr_path=tmp_path / "e2").wait_ready()
  try:
    lines = set((log_dir / "interactions.dat").read_text().splitlines())
    missing = [a for a in acked if "%d::%d::%d" % a not in lines]
    assert not missing, missing[:5]
    replayed = re.search(r"replayed (\d+) logged ratings", s2.stderr())
    assert int(replayed.group(1)) >= len(acked)
    # The replayed users are served adapted, their last ratings excluded.
    with httpx.Client(base_url=s2.url, timeout=60) as c:
      last = {}
      for user, item, _ in acked:
        last.setdefault(user, set()).add(item)
      for user, rated in last.items():
        r = c.get(f"/v1/users/{user}/recommendations?k=20").json()
        assert r["source"] == "adapted"
        assert not rated & {i["item"] for i in r["items"]}
  finally:
    s2.stop()
  # SIGTERM: uvicorn stops gracefully, and so does the command (it was
  # killed by the signal uvicorn raises again after its shutdown: 143).
  assert s2.proc.returncode == 0, s2.stderr()
  assert "stopped by SIGTERM: every acknowledged interaction is in" in (
      s2.stderr())


async def _gather(stream, n):
  await asyncio.gather(*(stream(w) for w in range(n)))


def test_the_log_feeds_metarec_export(server, client, exported, tmp_path):
  """serve -> log -> export: the log is a ratings file `export` reads."""
  # Two users of its own: the test does not lean on what others logged.
  for user in (424242, 424243):
    r = client.post(f"/v1/users/{user}/interactions",
                    json={"ratings": [[1193, 5], [2355, 4]]})
    assert r.status_code == 200
  out = str(tmp_path / "re-export")
  summary = export_lib.export_workdir(
      exported[1], str(server.log_dir / "interactions.dat"), out)
  assert summary["users"] >= 2
  again = export_lib.load(out)
  assert again.is_known(424242)
  assert set(again.user(424242).rated.tolist()) == set(
      again.item_index([1193, 2355]).tolist())


@pytest.fixture(scope="module")
def engine(exported):
  """An in-process engine of the export, keeping no rankings, warmed up."""
  export = export_lib.load(exported[0])
  e = engine_lib.Engine(export, engine_lib.Limits(max_batch=2, max_items=16),
                        rank_cache=0)
  e.warm_up()
  return e


def test_engine_learns_like_export_adapt(engine):
  """A learned user's model is `Export.adapt` on its known ratings plus the
  new ones (the export's rules), computed in batches."""
  export = engine.export
  users = [int(u) for u in export.user_ids[:3]]
  new = [(users[0], [1193, 661], [5.0, 1.0]), (users[1], [1193], [2.0]),
         (users[2], [3408], [4.0]), (users[0], [661], [4.0])]
  probe = export.item_ids[:16]
  with count_compiles() as compiles:  # every shape was warmed up
    engine.learn([(u, export.item_index(i), np.float32(r))
                  for u, i, r in new])
    got = engine.predict([(u, export.item_index(probe)) for u in users])
    engine.recommend([(u, 5) for u in users])
    engine.adapt([(export.item_index([1193, 661]), [5.0, 4.0], 3)])
  assert compiles[0] == 0
  for user, g in zip(users, got):
    row = export.user_row(user)
    items, ratings = export.known_ratings(row)
    pairs = list(zip(export.item_ids[items].tolist(), ratings.tolist()))
    pairs += [(i, r) for u, its, rs in new if u == user
              for i, r in zip(its, rs)]
    want = export.adapt(pairs, user_id=user).predict(probe)
    np.testing.assert_allclose(g["scores"], want, rtol=1e-4, atol=1e-4)


def test_a_session_keeps_its_own_leaves_not_its_batchs(engine):
  """Each learned user's leaves were views of the padded batch the device
  adapted them in: a session kept the whole batch's buffer alive (17.8 KB
  a session instead of 7.2 in a soak test of 110,000 new users)."""
  export = engine.export
  users = [10**8 + i for i in range(3)]
  item = export.item_index(export.item_ids[:1])
  engine.learn([(u, item, np.float32([4.0])) for u in users])
  for u in users:
    for leaf in engine.sessions[u].fast.values():
      assert leaf.base is None and leaf.flags.owndata


def test_adapted_leaves_beyond_the_cache_are_dropped_and_readapted(engine):
  """`--adapted_cache=3`: of 6 users taught, the last 3 hold their leaves; a
  request for the others re-adapts them together to what they were, and
  the least recently served lose theirs instead."""
  export = engine.export
  small = engine_lib.Engine(export, engine.limits, adapted_cache=3)
  users = [2 * 10**8 + i for i in range(6)]
  ids = export.item_ids[:3].tolist()
  taught = {u: list(zip(ids[:1 + n % 3], [4.0, 1.0, 5.0][:1 + n % 3]))
            for n, u in enumerate(users)}
  small.learn([(u, export.item_index([i for i, _ in pairs]),
                np.float32([r for _, r in pairs]))
               for u, pairs in taught.items()])
  assert len(small.sessions) == 6 and small.sessions.held == 3
  assert small.sessions.dropped(users) == users[:3]
  probe = export.item_ids[:16]
  calls = []
  adapt = small._adapt  # pylint: disable=protected-access
  small._adapt = lambda *a: calls.append(len(a[0])) or adapt(*a)  # pylint: disable=protected-access
  for batch, adapted in (([users[5]], []), ([users[0], users[1]], [2])):
    got = small.predict([(u, export.item_index(probe)) for u in batch])
    assert calls == adapted
    for u, g in zip(batch, got):
      assert g["source"] == "adapted"
      want = export.adapt(taught[u], user_id=u).predict(probe)
      np.testing.assert_allclose(g["scores"], want, rtol=1e-4, atol=1e-4)
  assert small.sessions.dropped(users) == [users[i] for i in (2, 3, 4)]
  small.recommend([(users[2], 3)])
  assert calls == [2, 1]
  assert small.sessions.dropped(users) == [users[i] for i in (3, 4, 5)]
  assert small.sessions.held == 3
  # A batch of more dropped users than the cache holds is served whole.
  one = engine_lib.Engine(export, engine.limits, adapted_cache=1)
  one.learn([(u, export.item_index([i for i, _ in taught[u]]),
              np.float32([r for _, r in taught[u]])) for u in users[:2]])
  got = one.predict([(u, export.item_index(probe)) for u in users[:2]])
  for u, g in zip(users[:2], got):
    want = export.adapt(taught[u], user_id=u).predict(probe)
    np.testing.assert_allclose(g["scores"], want, rtol=1e-4, atol=1e-4)
  assert one.sessions.held == 1


def test_a_start_adapts_only_the_most_recent_users_of_the_log(engine,
                                                              tmp_path):
  """A replay of 5 users' logged ratings with `--adapted_cache=2`: the two
  whose last rating is the latest are adapted at start, the others keep
  their ratings and are adapted, to the same model, when first asked for
  (a start adapted every user the log ever held: 12-28 s for 110,693)."""
  from metarec_jax.serve import interaction_log, service as service_lib  # pylint: disable=g-import-not-at-top
  export = engine.export
  fmt, clock = interaction_log.export_format(export.path)
  log = interaction_log.InteractionLog(str(tmp_path), fmt, clock=clock)
  users = [3 * 10**8 + i for i in range(5)]
  ids = export.item_ids[:4].tolist()
  # Rows in log order; user 0 rates last, then user 3.
  rows = [(users[1], ids[0], 4.0), (users[0], ids[1], 2.0),
          (users[2], ids[2], 5.0), (users[4], ids[0], 1.0),
          (users[3], ids[3], 3.0), (users[0], ids[2], 5.0)]
  log.append(*map(list, zip(*rows)))
  fresh = engine_lib.Engine(export, engine.limits, adapted_cache=2)
  calls = []
  adapt = fresh._adapt  # pylint: disable=protected-access
  fresh._adapt = lambda *a: calls.append(len(a[0])) or adapt(*a)  # pylint: disable=protected-access
  replayed = service_lib.replay(fresh, log)
  log.close()
  assert replayed == {"ratings": 6, "users": 5, "adapted": 2,
                      "skipped_items": 0}
  assert calls == [2] and fresh.sessions.held == 2
  assert fresh.sessions.dropped(users) == [users[i] for i in (1, 2, 4)]
  assert fresh.sessions[users[0]].items.tolist() == export.item_index(
      [ids[1], ids[2]]).tolist()
  probe = export.item_ids[:16]
  got = fresh.predict([(users[1], export.item_index(probe))])
  assert calls == [2, 1]
  want = export.adapt([(ids[0], 4.0)], user_id=users[1]).predict(probe)
  np.testing.assert_allclose(got[0]["scores"], want, rtol=1e-4, atol=1e-4)
  assert got[0]["source"] == "adapted"


def test_kept_rankings_are_the_live_ones(engine):
  """topk.jsonl preloaded, and rankings kept between requests, answer what
  ranking on the device answers."""
  export, live = engine.export, engine
  kept = engine_lib.Engine(export, live.limits)
  assert kept.rankings.preload(export) == export.num_users
  stored = np.load(os.path.join(export.path, "topk_scores.npy"))
  for row in (0, export.num_users - 1):  # served as the device scored them
    got = kept.rankings.get(export.user_ids[row].item(), 10)
    assert [s for _, s in got] == stored[row].tolist()
  kept.rankings.hits = 0
  users = [int(u) for u in export.user_ids[3:6]] + [31337]
  requests = [(u, k) for u in users for k in (3, 10, 20)]
  want = live.recommend(requests)
  for _ in range(2):  # preloaded or ranked, then kept
    got = kept.recommend(requests)
    for g, w in zip(got, want):
      assert g["source"] == w["source"]
      assert [i for i, _ in g["items"]] == [i for i, _ in w["items"]]
      np.testing.assert_allclose([s for _, s in g["items"]],
                                 [s for _, s in w["items"]], rtol=1e-5)
  assert kept.rankings.hits > 0


def test_a_ranking_of_the_whole_catalogue_is_kept_complete(engine):
  """Where max_k reaches the catalogue's size, the kept ranking of a user
  who rated nothing holds every item, yet was kept as cut short: each
  request for more than that went to the device (helper S)."""
  export = engine.export
  limits = engine_lib.Limits(max_batch=2, max_items=16, max_ratings=40,
                             max_k=export.num_items + 5)
  kept = engine_lib.Engine(export, limits)
  user = 10**9  # not in the export: nothing rated, nothing excluded
  first, = kept.recommend([(user, export.num_items + 5)])
  assert len(first["items"]) == export.num_items
  kept.rankings.hits = 0
  again, = kept.recommend([(user, export.num_items + 3)])
  assert kept.rankings.hits == 1 and again["items"] == first["items"]


def test_unknown_users_share_one_kept_ranking(engine):
  """Every id the export lacks is served the meta-parameters; each kept a
  copy of that one ranking (13 kB of memory per made-up id asked about,
  1.3 GB at the default cache size). A user who learns keeps its own."""
  export = engine.export
  kept = engine_lib.Engine(export, engine.limits)
  unknown = [10**9 + i for i in range(40)]
  got = kept.recommend([(u, 10) for u in unknown])
  assert len(kept.rankings) == 1
  assert all(g == got[0] and g["source"] == "meta" for g in got)
  known = int(export.user_ids[0])
  kept.recommend([(known, 10)])
  assert len(kept.rankings) == 2
  kept.learn([(unknown[0], export.item_index([1193]), np.float32([5.0]))])
  mine = kept.recommend([(unknown[0], 10), (unknown[1], 10)])
  assert mine[0]["source"] == "adapted" and mine[1] == got[1]
  assert len(kept.rankings) == 3
  assert kept.kept_ranking(unknown[2], 10) == got[2]["items"]


def test_a_damaged_topk_file_is_never_preloaded(engine, tmp_path):
  """`load` checks topk.jsonl's size and head only; the preload, which
  reads it whole, checks its digest, and every line where none is kept."""
  # pylint: disable=g-import-not-at-top
  import json
  import shutil
  from metarec_jax.errors import InputError
  from metarec_jax.export import checksums, layout
  copy = str(tmp_path / "export")
  shutil.copytree(engine.export.path, copy)
  export = export_lib.load(copy)
  topk = os.path.join(copy, layout.TOPK_FILE)
  lines = open(topk).read().splitlines()
  row = json.loads(lines[-1])
  row["scores"][0] = 1e30  # same line length: size kept, head kept
  text = json.dumps(row, separators=(",", ":"))
  assert len(text) <= len(lines[-1])
  lines[-1] = text + " " * (len(lines[-1]) - len(text))
  with open(topk, "w") as f:
    f.write("\n".join(lines) + "\n")
  kept = engine_lib.Engine(export, engine.limits)
  with pytest.raises(checksums.DamagedExport, match="topk.jsonl: content"):
    kept.rankings.preload(export)
  # Without a recorded digest (format 1) a line that is no ranking of the
  # catalogue's items is an error naming it.
  del export.manifest["files"][layout.TOPK_FILE]
  row["scores"][0], row["items"][0] = 0.5, 999999999
  with open(topk, "w") as f:
    f.write("\n".join(lines[:-1] + [json.dumps(row)]) + "\n")
  with pytest.raises(InputError, match=f"topk.jsonl:{len(lines)}: not a"
                     " ranking of the export's items"):
    kept.rankings.preload(export)


@pytest.mark.parametrize("moved", [False, True])
def test_a_log_that_cannot_be_written_is_a_503_and_nothing_is_learned(
    engine, tmp_path, caplog, moved):
  """A full disk under the log: a JSON 503 naming the cause; the user is
  not re-adapted (the log, not the model, is the record of what was
  acknowledged). A log removed under the server: no retry can succeed
  (the reply said 'retry later')."""
  # pylint: disable=g-import-not-at-top
  import errno
  from metarec_jax.serve import app as app_lib
  from metarec_jax.serve import interaction_log, service as service_lib
  fmt, clock = interaction_log.export_format(engine.export.path)
  log = interaction_log.InteractionLog(str(tmp_path), fmt, clock=clock)

  def full(*_):
    if moved:
      raise interaction_log.LogMoved(errno.ENOENT, "the log was removed")
    raise OSError(errno.ENOSPC, "No space left on device")

  log.append = full
  service = service_lib.Service(engine, log, max_wait=0.001)
  app = app_lib.create_app(service, token=None, max_body=4096)
  user = int(engine.export.user_ids[0])
  before = engine.sessions.get(user)

  async def post():
    await service.start()
    try:
      transport = httpx.ASGITransport(app=app)
      async with httpx.AsyncClient(transport=transport,
                                   base_url="http://test") as c:
        return await c.post(f"/v1/users/{user}/interactions",
                            json={"ratings": [[1193, 5]]})
    finally:
      await service.stop()

  r = asyncio.run(post())
  log.close()
  assert r.status_code == 503, r.text
  if moved:
    assert r.json()["error"] == (
        "storage error (the log was removed): nothing of this request was"
        " kept; start the server again (on a new log: restore the removed"
        " one first to keep what it held)")
    return
  assert r.json()["error"].startswith("storage error (No space left on"
                                      " device): nothing of this request")
  assert r.json()["error"].endswith("; retry later")
  assert engine.sessions.get(user) is before
  # The operator reads one line per failed batch, not a traceback each.
  failed = [r for r in caplog.records if "failed" in r.getMessage()]
  assert len(failed) == 1 and not failed[0].exc_info, failed  # not 1 + N
  assert "failed on storage: [Errno 28]" in failed[0].getMessage()


def test_bodies_the_parser_cannot_read_and_bugs_get_the_json_shape(
    engine, tmp_path, monkeypatch):
  """A body nested deeper than Python's parser goes (200 KB of `[[[...`,
  within the size limit) was a text 500 with a RecursionError traceback,
  a number of over 4300 digits FastAPI's bare "There was an error parsing
  the body"; and a bug in a route got Starlette's text 500."""
  # pylint: disable=g-import-not-at-top
  import json
  from metarec_jax.serve import app as app_lib
  from metarec_jax.serve import interaction_log, service as service_lib
  fmt, clock = interaction_log.export_format(engine.export.path)
  log = interaction_log.InteractionLog(str(tmp_path), fmt, clock=clock)
  service = service_lib.Service(engine, log, max_wait=0.001)
  app = app_lib.create_app(service, token=None, max_body=1 << 20)
  user = int(engine.export.user_ids[0])
  bodies = {
      "deep": b"[" * 100_000 + b"]" * 100_000,
      "long number": b'{"user": 1, "items": [' + b"9" * 5000 + b"]}",
  }

  async def requests():
    await service.start()
    try:
      transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
      async with httpx.AsyncClient(transport=transport,
                                   base_url="http://test") as c:
        out = {name: await c.post("/v1/predict", content=body, headers={
            "content-type": "application/json"})
               for name, body in bodies.items()}

        def broken(*_):
          raise RuntimeError("a bug")

        monkeypatch.setattr(engine, "predict", broken)
        out["bug"] = await c.post("/v1/predict",
                                  json={"user": user, "items": [1193]})
        return out
    finally:
      await service.stop()

  replies = asyncio.run(requests())
  log.close()
  expected = {
      "deep": (400, "malformed JSON: nested deeper than the parser goes"),
      "long number": (400, "malformed JSON: Exceeds the limit (4300 digits)"
                      " for integer string conversion: value has 5000"
                      " digits"),
      "bug": (500, "internal error (RuntimeError): the server logged it"),
  }
  for name, (status, message) in expected.items():
    r = replies[name]
    assert r.status_code == status, (name, r.text)
    assert r.headers["content-type"] == "application/json"
    assert json.loads(r.text) == {"error": message}, name


def test_a_request_cancelled_as_the_server_stops_gets_a_json_503():
  """uvicorn cancels what still runs when the grace period of a stop runs
  out (a client still sending its body): that was a text 500 and a
  CancelledError traceback in the server's log."""
  # pylint: disable=g-import-not-at-top
  import json
  from metarec_jax.serve import guards

  async def app(scope, receive, send):
    raise AssertionError("the body never arrived")

  async def receive():
    raise asyncio.CancelledError

  sent = []

  async def send(message):
    sent.append(message)

  scope = {"type": "http", "method": "POST", "headers": [
      (b"content-type", b"application/json"), (b"content-length", b"40")]}
  asyncio.run(guards.BodyLimit(app, max_bytes=100)(scope, receive, send))
  assert sent[0]["status"] == 503
  assert json.loads(sent[1]["body"]) == {
      "error": "the server is stopping: this request may not have been"
               " handled; send it again"}


def test_micro_batcher_groups_concurrent_requests():
  calls = []

  async def run(batch):
    calls.append(list(batch))
    return [ValueError("odd") if x % 2 else x * 10 for x in batch]

  async def main():
    b = MicroBatcher(run, max_batch=2, max_wait=0.05)
    b.start()
    results = await asyncio.gather(*(b.submit(x) for x in range(5)),
                                   return_exceptions=True)
    await b.stop()
    return results

  results = asyncio.run(main())
  assert [len(c) for c in calls] == [2, 2, 1]
  assert results[0] == 0 and results[2] == 20 and results[4] == 40
  assert isinstance(results[1], ValueError)


def test_the_readme_serve_flags_exist():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from metarec_jax import cli  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  section = text[text.index("### Serving over HTTP"):]
  section = section[:section.index("\n## ")]
  used = set(re.findall(r"--([a-z_-]+)=", section.split("```")[1]))
  fv = flags.FlagValues()
  cli.COMMANDS["serve"].define(fv)
  assert used and used <= set(fv), used - set(fv)
  assert "serve -> log" in section and "metarec train" in section


def test_a_log_header_that_cannot_be_written_names_the_file(tmp_path,
                                                            monkeypatch):
  """A full disk when a new log writes its header: one line naming the
  log (`os.write` names no file), and the folder it made removed."""
  import errno  # pylint: disable=g-import-not-at-top
  from metarec_jax.data.convert import ratings_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import OutputError  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  fmt = ratings_io.RatingsFormat(
      rating_min=1, rating_max=5, **ratings_io.DEFAULT_FORMAT)

  def full(*_):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(interaction_log.os, "write", full)
  with pytest.raises(OutputError, match=r"cannot write .*log[/\\]interac"
                     r"tions\.csv: No space left on device"):
    interaction_log.InteractionLog(str(tmp_path / "log"), fmt)
  assert os.listdir(tmp_path) == []


def test_interaction_log_generic_columns_torn_tail_and_lock(tmp_path,
                                                          caplog):
  from metarec_jax.data.convert import ratings_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  fmt = ratings_io.RatingsFormat(
      rating_min=0.5, rating_max=5.0, user_id_type="str", item_id_type="str",
      **ratings_io.DEFAULT_FORMAT)
  log = interaction_log.InteractionLog(str(tmp_path), fmt)
  assert log.read() is None  # the header alone
  log.append(["u1", "u2"], ["i1", "i2"], [4.5, 1.0])
  log.append(["u1"], ["i3"], [3.25])
  with pytest.raises(InputError, match="locked by another server"):
    interaction_log.InteractionLog(str(tmp_path), fmt)
  with pytest.raises(ValueError, match="control character"):
    log.check_user_id("a\nb")
  log.check_user_id("a,b")  # quoted in the log (read back as itself)
  log.close()
  with open(log.path, "ab") as f:
    f.write(b"u9,i9,")  # a write cut short by a crash: never acknowledged
  with caplog.at_level(logging.WARNING, logger="metarec"):
    log = interaction_log.InteractionLog(str(tmp_path), fmt)
  assert f"{log.path}: cut off its last line, 6 byte(s) without a newline" \
      in caplog.text  # it was cut in silence
  rows = log.read()
  assert rows.users.tolist() == ["u1", "u2", "u1"]
  assert rows.items.tolist() == ["i1", "i2", "i3"]
  assert rows.ratings.tolist() == [4.5, 1.0, 3.25]
  with open(log.path) as f:
    assert f.read().splitlines()[0] == "user,item,rating"
  log.close()


def test_a_logged_rating_reads_back_as_the_value_learned(tmp_path):
  """The server learns a rating's float32 value; the log must give that
  value back after a restart. Written with 7 digits, 2.9999998 (below an
  implicit threshold of 3: a known negative) read back as 3, a positive,
  and kill -9 and a restart changed the user's model."""
  from metarec_jax.data.convert import ratings_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  fmt = ratings_io.RatingsFormat(
      rating_min=1.0, rating_max=5.0, user_id_type="str", item_id_type="str",
      **ratings_io.DEFAULT_FORMAT)
  log = interaction_log.InteractionLog(str(tmp_path), fmt)
  given = [2.9999998, 1.00000012, 4.5, 3.14159265]
  log.append(["u"] * 4, ["a", "b", "c", "d"], given)
  log.close()
  log = interaction_log.InteractionLog(str(tmp_path), fmt)
  back = log.read().ratings.astype(np.float32)
  log.close()
  assert back.tolist() == np.asarray(given, np.float32).tolist()
  with open(log.path) as f:
    assert f.read().splitlines()[3] == "u,c,4.5"  # short where exact


def test_a_log_begun_under_another_header_goes_on_under_it(tmp_path):
  """A log folder kept across exports (or begun before stores recorded the
  dataset's columns): new lines follow the header the log has, so it
  reads back whole; a header without this export's columns is refused."""
  from metarec_jax.data.convert import ratings_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  old = ratings_io.RatingsFormat(
      rating_min=1.0, rating_max=5.0, user_id_type="str", item_id_type="str",
      **ratings_io.DEFAULT_FORMAT)
  log = interaction_log.InteractionLog(str(tmp_path), old)
  log.append(["u1"], ["i1"], [4.0])
  log.close()
  new = dataclasses.replace(old, columns=("item", "rating", "note", "user"))
  log = interaction_log.InteractionLog(str(tmp_path), new)
  log.append(["u2"], ["i2"], [2.0])
  rows = log.read()
  assert rows.users.tolist() == ["u1", "u2"]
  assert rows.items.tolist() == ["i1", "i2"]
  log.close()
  with open(log.path) as f:
    assert f.read() == "user,item,rating\nu1,i1,4\nu2,i2,2\n"
  other = dataclasses.replace(old, user="customer", columns=("customer",
                                                             "item", "rating"))
  with pytest.raises(InputError, match="give the server another --log_dir"):
    interaction_log.InteractionLog(str(tmp_path), other)
  interaction_log.InteractionLog(str(tmp_path), old).close()  # not locked


@pytest.mark.parametrize("first, clock", [
    ("2021-03-04T10:00:00Z", "iso"), ("2021-03-04", "iso"),
    ("1614852000000", "milliseconds"), ("1614852000", "seconds"),
    ("1614852000.5", "seconds"), ("1614852000250.0", "milliseconds"),
    ("7", "seconds")])
def test_the_log_writes_times_that_read_after_the_files(tmp_path, first,
                                                        clock):
  """The README's loop joins the export's ratings file and the log: the
  log's times are of the file's kind and unit, so the joined file reads,
  and reads the logged rating as the newest."""
  from metarec_jax.data.convert import parsing, ratings_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  fmt = ratings_io.RatingsFormat(
      rating_min=1.0, rating_max=5.0, user_id_type="str", item_id_type="str",
      **{**ratings_io.DEFAULT_FORMAT, "timestamp": "ts"})
  data = tmp_path / "ratings.csv"
  data.write_text(f"user,item,rating,ts\na,x,4,{first}\n")
  rows = ratings_io.parse_ratings(str(data), fmt)
  file_clock = parsing.clock_of_file(rows.clock, rows.timestamps)
  assert file_clock.unit == clock
  log = interaction_log.InteractionLog(str(tmp_path / "log"), fmt,
                                       clock=file_clock)
  log.append(["b"], ["y"], [3.0])
  log.close()
  logged = open(log.path).read().splitlines()[1:]
  joined = tmp_path / "joined.csv"
  joined.write_text(data.read_text() + "\n".join(logged) + "\n")
  rows = ratings_io.parse_ratings(str(joined), fmt)
  assert rows.users.tolist() == ["a", "b"]
  assert rows.timestamps[1] > rows.timestamps[0]


@pytest.mark.parametrize("latest", ["16000000000", "2999-01-01T00:00:00Z"])
def test_the_log_writes_times_after_a_file_whose_unit_is_guessed(tmp_path,
                                                                   latest):
  """Tenths of seconds (read as seconds by their size) or dates in the
  future: the log wrote the time now, older than the file's newest, and a
  retrain on the joined file took the logged ratings for the oldest."""
  from metarec_jax.data.convert import parsing, ratings_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  fmt = ratings_io.RatingsFormat(
      rating_min=1.0, rating_max=5.0, user_id_type="str", item_id_type="str",
      **{**ratings_io.DEFAULT_FORMAT, "timestamp": "ts"})
  data = tmp_path / "ratings.csv"
  data.write_text(f"user,item,rating,ts\na,x,4,{latest}\n")
  rows = ratings_io.parse_ratings(str(data), fmt)
  log = interaction_log.InteractionLog(
      str(tmp_path / "log"), fmt,
      clock=parsing.clock_of_file(rows.clock, rows.timestamps))
  log.append(["b"], ["y"], [3.0])
  log.close()
  joined = tmp_path / "joined.csv"
  joined.write_text(data.read_text() + "\n".join(
      open(log.path).read().splitlines()[1:]) + "\n")
  rows = ratings_io.parse_ratings(str(joined), fmt)
  assert rows.timestamps[1] > rows.timestamps[0]


@pytest.mark.parametrize("delimiter,quoting", [(",", "auto"), ("::", "auto"),
                                               (",", "none")])
def test_every_user_id_the_log_accepts_reads_back_as_itself(tmp_path,
                                                            delimiter,
                                                            quoting):
  """An acknowledged rating must come back for its own user after a
  restart: ids the log cannot write faithfully are refused up front. A
  one-character delimiter is quoted, as a dataset's CSV may quote it (its
  users were refused, on every endpoint, though the log reads them back);
  with data.generic.quoting=none nothing is (`x,y` passed the check, and
  its write failed every request of its batch with a 500)."""
  from metarec_jax.data.convert import ratings_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  fmt = ratings_io.RatingsFormat(
      rating_min=1.0, rating_max=5.0, user_id_type="str", item_id_type="str",
      quoting=quoting,
      **(ratings_io.DEFAULT_FORMAT if delimiter == "," else {
          "delimiter": delimiter, "header": False, "user": 0, "item": 1,
          "rating": 2, "timestamp": None}))
  log = interaction_log.InteractionLog(str(tmp_path), fmt)
  good = ["alice", "b\u00f6b", "x@shop.com", "SKU 12", "\u0663"]
  bad = ["zz\0q", "u1\0", "\ufeffbob", "x\ufffd", "a\u2028b", "t\tb"]
  if delimiter == "," and quoting == "auto":
    good += ['a"b', "a;b", "a,b", ",lead", '"a,"b"']
  elif delimiter == ",":
    good += ['a"b', "a;b", '"q"']  # a '"' is text
    bad += ["a,b", ",lead"]
  else:
    good += ['a"b']  # a '"' is text in a '::' file
    bad += ["zed:", "a" + delimiter + "b"]
  for user in bad:
    with pytest.raises(ValueError, match="cannot be logged"):
      log.check_user_id(user)
  # Named for the character, also at either end (str.strip() strips these:
  # they were called "padded with spaces").
  for user, code in [("bob\u2028", "2028"), ("\u2029bob", "2029"),
                     ("bob\x1c", "001C"), ("bob\x85", "0085"),
                     ("bob\n", "000A")]:
    with pytest.raises(ValueError, match=f"it holds U\\+{code}, a control"):
      log.check_user_id(user)
  with pytest.raises(ValueError, match="padded with spaces"):
    log.check_user_id("bob ")
  for user in good:
    log.check_user_id(user)
  log.append(good, ["i1"] * len(good), [4.0] * len(good))
  log.close()
  log = interaction_log.InteractionLog(str(tmp_path), fmt)
  assert log.read().users.tolist() == good
  log.close()


def test_a_folder_where_the_log_file_goes_is_an_input_error(tmp_path):
  """`LOG_DIR/interactions.csv` a folder: the one-line error (exit 2 from
  `metarec serve`; it was an OSError, exit 1), and the folder's lock let
  go, so a corrected start is not refused as locked."""
  from metarec_jax.data.convert import ratings_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  fmt = ratings_io.RatingsFormat(
      rating_min=0.5, rating_max=5.0, user_id_type="str", item_id_type="str",
      **ratings_io.DEFAULT_FORMAT)
  path = tmp_path / f"{interaction_log.LOG_NAME}.{fmt.extension}"
  path.mkdir()
  with pytest.raises(InputError, match="cannot use the interaction log") as e:
    interaction_log.InteractionLog(str(tmp_path), fmt)
  assert str(path) in str(e.value)
  path.rmdir()
  interaction_log.InteractionLog(str(tmp_path), fmt).close()


def test_a_kept_ranking_is_stored_as_arrays_and_read_back_as_put():
  """A top 100 kept as Python lists of ints and floats took about 7 KB
  (0.7 GB at the default --rank_cache); `get` gives back the values put."""
  from metarec_jax.serve import rankings  # pylint: disable=g-import-not-at-top
  cache = rankings.RankCache(10)
  scores = np.sort(np.random.default_rng(0).random(100).astype(np.float32))
  ids = list(range(1000, 1100))
  cache.put("u", ids, scores[::-1].tolist(), complete=False)
  stored_ids, stored_scores, _ = cache._entries["u"]  # pylint: disable=protected-access
  assert isinstance(stored_ids, np.ndarray)
  assert stored_scores.dtype == np.float32
  got = cache.get("u", 5)
  assert got == list(zip(ids[:5], scores[::-1][:5].tolist()))
  assert all(type(i) is int and type(s) is float for i, s in got)
  # Text ids stay a list: an array is as wide as its longest id (one URL
  # among a top 100 made the entry 20 times larger).
  cache.put("v", ["a b", "c" * 500], [2.5, 1.0], complete=True)
  assert isinstance(cache._entries["v"][0], list)  # pylint: disable=protected-access
  assert cache.get("v", 10) == [("a b", 2.5), ("c" * 500, 1.0)]


def test_a_log_of_another_formats_export_is_refused(tmp_path):
  """A folder holding interactions.dat (a MovieLens export's log) served
  with a generic export: the start read its own interactions.csv, replayed
  0 ratings and served every logged user as unknown, without a word."""
  from metarec_jax.data.convert import ratings_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  fmt = ratings_io.RatingsFormat(
      rating_min=1, rating_max=5, **ratings_io.DEFAULT_FORMAT)
  (tmp_path / "interactions.dat").write_text("7::1193::4\n")
  (tmp_path / "interactions.dat.bak").write_text("")  # not a log: no matter
  # Nor is a log of only its header (a reviewer's finding: refused).
  (tmp_path / "interactions.tsv").write_text("user\titem\trating\n")
  with pytest.raises(InputError, match=r"holds interactions\.dat, the log of"
                     r" an export of another input format \(this export's"
                     r" log is interactions\.csv\)"):
    interaction_log.InteractionLog(str(tmp_path), fmt)
  assert sorted(os.listdir(tmp_path)) == ["interactions.dat",
                                          "interactions.dat.bak",
                                          "interactions.tsv"]
  (tmp_path / "interactions.dat").unlink()
  interaction_log.InteractionLog(str(tmp_path), fmt).close()


def test_a_log_removed_under_the_server_takes_no_more_ratings(tmp_path):
  """The log folder deleted while serving: appends went on to the deleted
  file, each acknowledged (200), and were gone at the next start (a helper's
  finding); now each is a storage error, whether the file was removed or
  replaced."""
  import shutil  # pylint: disable=g-import-not-at-top
  from metarec_jax.data.convert import ratings_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.serve import interaction_log  # pylint: disable=g-import-not-at-top
  fmt = ratings_io.RatingsFormat(
      rating_min=1, rating_max=5, **ratings_io.DEFAULT_FORMAT)
  folder = tmp_path / "log"
  log = interaction_log.InteractionLog(str(folder), fmt)
  log.append([1], [2], [4.0])
  shutil.rmtree(folder)
  with pytest.raises(interaction_log.LogMoved, match="the open log, was removed"):
    log.append([1], [3], [5.0])
  log.close()
  log = interaction_log.InteractionLog(str(folder), fmt)
  log.append([1], [2], [4.0])
  os.replace(log.path, log.path + ".old")
  with open(log.path, "w") as f:
    f.write("user,item,rating\n")
  with pytest.raises(OSError, match="the open log, was removed"):
    log.append([1], [3], [5.0])
  log.close()


def test_support_widths_double_beyond_the_buckets(exported):
  """Beyond the last of `data.buckets` the server's support widths double
  (they stepped by 16 as training's do: 32 widths, 190 programs to
  compile before serving an export with max_support 500); a support
  padded wider adapts the user as `Export.adapt` at its own width does."""
  assert sizes.support_widths(500, (8, 16)) == (8, 16, 32, 64, 128, 256,
                                                512)
  assert sizes.support_widths(96, (16, 32, 64, 96)) == (16, 32, 64, 96)
  assert sizes.support_widths(20, (8, 16, 32, 64)) == (8, 16, 32)
  export = export_lib.load(exported[0])
  export.max_support = 300  # as if trained with it
  engine = engine_lib.Engine(export, engine_lib.Limits(max_batch=2,
                                                       max_items=16))
  assert export.buckets == (16, 32, 64, 96)  # (the run's)
  assert engine.support_widths == (16, 32, 64, 96, 192, 304)
  items, probe = export.item_ids[:100], export.item_ids[100:116]
  ratings = np.float32(np.arange(100) % 5 + 1)
  user = 10 ** 9 + 5  # a user the export does not have
  engine.learn([(user, export.item_index(items), ratings)])  # width 192
  got = engine.predict([(user, export.item_index(probe))])[0]["scores"]
  want = export.adapt(list(zip(items.tolist(), ratings.tolist())),
                      user_id=user).predict(probe)  # width 112
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_long_string_ids_are_served_and_ratings_stay_on_the_scale(tmp_path):
  """Ids of 300 characters trained and exported, then every request naming
  them was a 422 (a fixed 256-character limit): the user could never be
  served, and an item the server itself recommended could not be rated.
  The bound is 1,024 or the longest id of the export or of the dataset's
  user table (an 1,100-character user only there, reviewer R).
  `rating` is the score clipped to the scale, as eval scores it (a served
  5.70 on a 1-5 scale)."""
  import datafiles  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  long_user, long_item = "u" + "x" * 1099, "https://shop.example/" + "p" * 300
  items = [long_item] + [f"i{i}" for i in range(39)]
  users = [long_user] + [f"u{u}" for u in range(79)]
  lines = ["user,item,rating"] + [
      f"{u},{items[i]},{rng.integers(1, 6)}" for u in users
      for i in rng.choice(40, 30, replace=False)]
  datafiles.write(str(tmp_path / "r.csv"), "\n".join(lines) + "\n")
  work = tmp_path / "run"
  out = metarec_here(
      "train", f"--config={config_path('tiny')}", f"--workdir={work}",
      "--config.data.name=generic", f"--config.data.root={tmp_path}",
      "--config.data.generic.ratings=r.csv", "--config.train.num_steps=1",
      "--config.train.eval_every_steps=0")
  assert out.returncode == 0, out.stderr
  # The long user is left out of the export: the server still serves it
  # from the dataset's user table, whose ids bound the length too.
  datafiles.write(str(tmp_path / "others.csv"), "\n".join(
      l for l in lines if not l.startswith(long_user)) + "\n")
  out = metarec_here("export", f"--workdir={work}",
                     f"--ratings={tmp_path / 'others.csv'}",
                     f"--out={tmp_path / 'export'}")
  assert out.returncode == 0, out.stderr
  assert long_user in export_lib.load(str(tmp_path / "export")).table_ids
  server = Server(tmp_path / "export", tmp_path / "log",
                  stderr_path=tmp_path / "stderr")
  try:
    server.wait_ready()
    r = httpx.post(server.url + "/v1/predict", timeout=60,
                   json={"user": long_user, "items": [long_item, "i1"]})
    assert r.status_code == 200, r.text
    for scored in r.json()["items"]:
      assert scored["rating"] == min(max(scored["score"], 1.0), 5.0)
    user = urllib.parse.quote(long_user, safe="")
    r = httpx.post(f"{server.url}/v1/users/{user}/interactions", timeout=60,
                   json={"ratings": [[long_item, 5]]})
    assert r.status_code == 200, r.text
    r = httpx.post(server.url + "/v1/predict", timeout=60,
                   json={"user": "n" * 1101, "items": ["i1"]})
    assert r.status_code == 422 and "at most 1100" in r.text, r.text
  finally:
    server.stop()
