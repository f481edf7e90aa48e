"""`metarec data fetch`: download and unpack a MovieLens release.

The zip is streamed to a temporary file beside the destination, its MD5
checked, and unpacked into a temporary folder beside it that is renamed to
the destination as the last step: a failed or killed fetch leaves no half
folder (a later fetch removes the temporary leftovers of a killed one).
A zip whose members all sit in one top folder (`ml-1m/...`) has that folder
become the destination, so `--dest` is directly the `data.root` to use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
import uuid
import zipfile
from typing import Callable

from metarec_jax.errors import InputError

RELEASES = {
    "movielens-1m": (
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "c4d9eecfca2ab87c1945afe126590906"),
    "movielens-100k": (
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "0e33842e24a9c977be4e0107933c0723"),
}
MARKER = ".metarec-fetch.json"
_CHUNK = 1 << 20


def _clean_stale(prefix: str) -> None:
  parent = os.path.dirname(prefix)
  for entry in os.listdir(parent):
    path = os.path.join(parent, entry)
    if path.startswith(prefix):
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        os.remove(path)


def _download(url: str, path: str, log) -> str:
  """Streams `url` to `path`; returns the MD5 hex digest."""
  md5 = hashlib.md5()
  try:
    with urllib.request.urlopen(url, timeout=60) as response, \
        open(path, "wb") as f:
      total = int(response.headers.get("Content-Length") or 0)
      done = 0
      while chunk := response.read(_CHUNK):
        f.write(chunk)
        md5.update(chunk)
        done += len(chunk)
      if total and done != total:
        raise InputError(f"download cut short: {done} of {total} bytes",
                         path=url)
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = getattr(e, "reason", None) or e
    raise InputError(f"download failed: {reason}", path=url) from None
  if log is not None:
    log(f"downloaded {done:,} bytes from {url}")
  return md5.hexdigest()


def _unpack(zip_path: str, into: str, url: str) -> str:
  """Extracts the zip into `into`; returns the folder holding the files."""
  try:
    with zipfile.ZipFile(zip_path) as z:
      names = z.namelist()
      for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
          raise InputError(f"unsafe member path {name!r} in the zip",
                           path=url)
      z.extractall(into)
  except zipfile.BadZipFile as e:
    raise InputError(f"not a valid zip file: {e}", path=url) from None
  top = {n.replace("\\", "/").split("/")[0] for n in names}
  if len(top) == 1 and os.path.isdir(os.path.join(into, *top)):
    return os.path.join(into, *top)
  return into


def fetch(dataset: str, dest: str | os.PathLike, *, url: str | None = None,
          md5: str | None = None,
          log: Callable[[str], None] | None = None) -> str:
  """Downloads, verifies and unpacks `dataset` into the folder `dest`.

  Args:
    dataset: a key of `RELEASES`.
    dest: the folder to create (it becomes the dataset's `data.root`).
    url, md5: override the release's address and checksum (mirrors, tests).

  Returns:
    The absolute path of `dest`.

  Raises:
    InputError: unknown dataset, `dest` exists with other content, the
      download fails, the checksum differs, or the zip is unusable.
  """
  if dataset not in RELEASES:
    raise InputError(f"--dataset must be one of {', '.join(RELEASES)}, got"
                     f" {dataset!r}")
  default_url, default_md5 = RELEASES[dataset]
  url = url or default_url
  md5 = (md5 or (default_md5 if url == default_url else "")).lower()
  if not md5:
    raise InputError("--md5 is required with a non-default --url")
  dest = os.path.abspath(os.fspath(dest))
  if os.path.exists(dest):
    try:
      with open(os.path.join(dest, MARKER)) as f:
        if json.load(f).get("md5") == md5:
          if log is not None:
            log(f"{dataset} is already in {dest}")
          return dest
    except (OSError, ValueError):
      pass
    raise InputError("already exists; remove it or choose another --dest",
                     path=dest)
  parent, name = os.path.split(dest)
  os.makedirs(parent, exist_ok=True)
  prefix = os.path.join(parent, f".{name}.fetch-")
  _clean_stale(prefix)
  tmp = prefix + uuid.uuid4().hex[:8]
  zip_path, unpack = tmp + ".zip", tmp + ".d"
  try:
    digest = _download(url, zip_path, log)
    if digest != md5:
      raise InputError(f"checksum mismatch: MD5 {digest}, expected {md5}",
                       path=url)
    os.makedirs(unpack)
    folder = _unpack(zip_path, unpack, url)
    with open(os.path.join(folder, MARKER), "w") as f:
      json.dump({"dataset": dataset, "url": url, "md5": md5}, f)
    os.rename(folder, dest)
  finally:
    if os.path.exists(zip_path):
      os.remove(zip_path)
    shutil.rmtree(unpack, ignore_errors=True)
  return dest
