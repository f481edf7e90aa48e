"""`metarec data fetch` against a local HTTP server."""

import contextlib
import functools
import hashlib
import http.server
import os
import threading
import zipfile

import pytest

from cli_run import assert_one_line_error, last_json, metarec
from metarec_jax.data.convert import fetch
from metarec_jax.errors import InputError


class _Quiet(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@contextlib.contextmanager
def serving(folder):
  handler = functools.partial(_Quiet, directory=str(folder))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    server.shutdown()
    server.server_close()


@pytest.fixture
def release(tmp_path):
  """A small zip shaped like GroupLens': files inside one top folder."""
  site = tmp_path / "site"
  site.mkdir()
  path = site / "ml-tiny.zip"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("ml-tiny/u.data", "1\t2\t3\t4\n")
    z.writestr("ml-tiny/README", "tiny\n")
  return site, hashlib.md5(path.read_bytes()).hexdigest()


def test_fetch_downloads_checks_and_unpacks(release, tmp_path):
  site, md5 = release
  dest = tmp_path / "data" / "ml-100k"
  with serving(site) as url:
    out = metarec("data", "fetch", "--dataset=movielens-100k",
                  f"--dest={dest}", f"--url={url}/ml-tiny.zip",
                  f"--md5={md5}", timeout=120)
    assert out.returncode == 0, out.stderr
    assert last_json(out) == {"dataset": "movielens-100k",
                              "dest": str(dest)}
    assert f"files are in {dest}" in out.stdout
    assert (dest / "u.data").read_text() == "1\t2\t3\t4\n"
    assert sorted(os.listdir(dest.parent)) == ["ml-100k"]  # no leftovers
    again = metarec("data", "fetch", "--dataset=movielens-100k",
                    f"--dest={dest}", f"--url={url}/ml-tiny.zip",
                    f"--md5={md5}", timeout=120)
  assert again.returncode == 0 and "already" in again.stderr


def test_a_checksum_mismatch_leaves_nothing(release, tmp_path):
  site, _ = release
  dest = tmp_path / "data" / "ml-100k"
  with serving(site) as url:
    out = metarec("data", "fetch", "--dataset=movielens-100k",
                  f"--dest={dest}", f"--url={url}/ml-tiny.zip",
                  f"--md5={'0' * 32}", timeout=120)
  assert_one_line_error(out, "checksum mismatch")
  assert not dest.exists()
  assert os.listdir(dest.parent) == []


def test_fetch_errors(release, tmp_path):
  site, md5 = release
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  with pytest.raises(InputError, match="already exists"):
    fetch.fetch("movielens-1m", tmp_path / "full")
  with pytest.raises(InputError, match="--dataset must be one of"):
    fetch.fetch("netflix", tmp_path / "n")
  with pytest.raises(InputError, match="--md5 is required"):
    fetch.fetch("movielens-1m", tmp_path / "n", url="http://127.0.0.1:9/x")
  # A killed fetch's leftovers are removed by the next one.
  stale = tmp_path / ".m.fetch-dead.d"
  stale.mkdir()
  with serving(site) as url:
    with pytest.raises(InputError, match="download failed"):
      fetch.fetch("movielens-1m", tmp_path / "m", url=f"{url}/missing.zip",
                  md5=md5)
    assert not stale.exists() and not (tmp_path / "m").exists()
    fetch.fetch("movielens-1m", tmp_path / "m", url=f"{url}/ml-tiny.zip",
                md5=md5)
  assert (tmp_path / "m" / "README").exists()


def test_the_official_releases_are_known():
  assert fetch.RELEASES["movielens-1m"] == (
      "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
      "c4d9eecfca2ab87c1945afe126590906")
  assert fetch.RELEASES["movielens-100k"][1] == (
      "0e33842e24a9c977be4e0107933c0723")
