"""Which input files a task store was built from.

A work directory builds its store once and opens it afterwards, so a
resume pointed at other data (another `data.root`, or the same files
edited since) trained on the old store's copy, with only a "changed
config" line in the log (none at all where the files changed in place).
The store records each input file's size, modification time and SHA-256;
a later run compares the files it is given. As `rsync` does, a file of the
same size and modification time is taken as unchanged without reading it,
so a resume reads its inputs again only where they were touched.
"""

from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20
OTHER_CONTENT = "the same size, other content"


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_CHUNK), b""):
      digest.update(block)
  return digest.hexdigest()


def record(root: str, names: list[str]) -> dict[str, dict]:
  """`{name: {"bytes", "mtime_ns", "sha256"}}` of each of `names` (paths
  relative to `root`) that is a file; the loader names a missing one."""
  out = {}
  for name in names:
    path = os.path.join(root, name)
    if os.path.isfile(path):
      st = os.stat(path)
      out[name] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                   "sha256": _sha256(path)}
  return out


def first_change(recorded: dict[str, dict], root: str) -> str | None:
  """How the first of the `recorded` files differs from the one now at
  `root` ("NAME: ..."), None where none does. A file no longer there is
  no change: the store holds what it was built from, and a user may
  delete the inputs once it is built."""
  for name, was in recorded.items():
    path = os.path.join(root, name)
    try:
      st = os.stat(path)
    except OSError:
      continue
    if st.st_size != was["bytes"]:
      return _sizes(name, was["bytes"], st.st_size)
    if st.st_mtime_ns != was["mtime_ns"] and _sha256(path) != was["sha256"]:
      return f"{name}: {OTHER_CONTENT}"
  return None


def difference(then: dict[str, dict], now: dict[str, dict]) -> str | None:
  """How two `record`s differ ("NAME: ..." of the first name in order),
  None where they hold the same files (sizes and contents: a copy of the
  files elsewhere has other modification times, and is the same data)."""
  for name in sorted(set(then) | set(now)):
    was, new = then.get(name), now.get(name)
    if was is None or new is None:
      return f"{name}: not read {'then' if was is None else 'now'}"
    if was["bytes"] != new["bytes"]:
      return _sizes(name, was["bytes"], new["bytes"])
    if was["sha256"] != new["sha256"]:
      return f"{name}: {OTHER_CONTENT}"
  return None


def _sizes(name: str, then: int, now: int) -> str:
  return f"{name}: {then:,} bytes then, {now:,} now"
