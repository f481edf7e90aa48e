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
      return f"{name}: {was['bytes']:,} bytes then, {st.st_size:,} now"
    if st.st_mtime_ns != was["mtime_ns"] and _sha256(path) != was["sha256"]:
      return f"{name}: the same size, other content"
  return None
