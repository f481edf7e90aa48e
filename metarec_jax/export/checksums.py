"""Checksums of an export's files: recorded at write time, checked at load.

The manifest (format 2) lists every other file of the folder with its size,
the SHA-256 of its first 4 KiB (a `.npy` header and the start of its data)
and the SHA-256 of all its bytes. `load` always checks

- every file's size and head (a stat and one 4 KiB read per file), and
- the whole digest of every file it reads whole anyway: the ids, flags,
  offsets, support sizes, the catalogue and its feature tables, the user
  table, the meta- and inner parameters;

the per-user arrays that serving reads a row at a time through the memory
map (`params/adapted/`, `user/`, `rated_items.npy`, `rated_ratings.npy`)
and `topk.jsonl` are hashed whole only on request (`load(DIR,
verify=True)`, `metarec export --verify --out=DIR`): reading gigabytes at
every load would defeat the memory map. Hashing runs at about 1.5 s per GB
(see `metarec_jax.integrity`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from metarec_jax import integrity
from metarec_jax.errors import InputError

log = logging.getLogger("metarec")

HEAD_BYTES = 4096
# Read a row at a time by serving: hashed whole only on request.
_ROW_READ = ("params/adapted/", "user/", "rated_items.npy",
             "rated_ratings.npy", "topk.jsonl")


class DamagedExport(InputError):
  """An export file that is missing, or differs from what its manifest
  records (its size, its head or its whole content)."""


def read_whole_at_load(name: str) -> bool:
  """Whether `load` reads the file `name` (relative path) whole, and so
  checks its full digest at every load."""
  return not name.startswith(_ROW_READ)


def _head_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()


def record(folder: str, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
  """`{relative path: {bytes, head, sha256}}` of every file in `folder`."""
  files = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder).replace(os.sep, "/")
      if rel in exclude:
        continue
      files[rel] = {"bytes": os.path.getsize(path),
                    "head": _head_digest(path),
                    integrity.ALGORITHM: integrity.file_digest(path)}
  return dict(sorted(files.items()))


def check(folder: str, files: dict[str, Any], *, everything: bool) -> int:
  """Checks the files of an export folder against the manifest's records:
  sizes and heads of all, whole digests of those read whole at load (all
  of them with `everything`).

  Returns:
    The number of bytes hashed whole.

  Raises:
    DamagedExport: naming the first file that does not match.
  """
  hashed = 0
  for name, rec in files.items():
    path = os.path.join(folder, name)
    try:
      size = os.path.getsize(path)
    except OSError as e:
      raise DamagedExport(f"listed in the manifest but unreadable"
                          f" ({e.strerror or e}): the export is damaged;"
                          " export again", path=path) from None
    if size != rec["bytes"]:
      raise DamagedExport(f"{size:,} bytes where the manifest records"
                          f" {rec['bytes']:,}: the export is damaged; export"
                          " again", path=path)
    whole = everything or read_whole_at_load(name)
    if _head_digest(path) != rec["head"] or (
        whole and integrity.file_digest(path) != rec[integrity.ALGORITHM]):
      raise DamagedExport(f"content differs from the {integrity.ALGORITHM}"
                          " recorded in the manifest: the export is damaged;"
                          " export again", path=path)
    hashed += size if whole else 0
  return hashed


def check_manifest(path: str, manifest: dict[str, Any], *,
                   everything: bool) -> int:
  """`check` of the folder `path` against its loaded manifest. A format-1
  manifest records nothing: a warning, or an error with `everything`."""
  if "files" not in manifest:
    if everything:
      raise InputError("export format 1 records no checksums to verify;"
                       " export again", path=path)
    log.warning("%s: export format 1 records no checksums, so its files are"
                " not verified; export again to get them", path)
    return 0
  return check(path, manifest["files"], everything=everything)
