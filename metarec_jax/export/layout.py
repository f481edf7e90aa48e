"""The export folder: file names, per-user flags, dtypes, the atomic writer.

Layout of `metarec export --out=DIR` (every array a `.npy` file, opened
with `mmap_mode="r"` by `export.load`):

    manifest.json                 format name and version, counts, dtype,
                                  the config, the model's feature schema,
                                  the parameter leaves, the flag bits, and
                                  (format 2) `files`: every other file's
                                  size and SHA-256 digests (`checksums`)
    manifest.sha256               (format 3) the manifest's own SHA-256, in
                                  `sha256sum -c` format: checked at load
    users.npy          [U]        external user ids, sorted (int64 or str)
    flags.npy          [U] uint8  per-user FLAGS bits
    user/NAME.npy      [U(, L)]   int32 user feature indices each user is
                                  served with (0 = missing)
    rated_offsets.npy  [U+1]      int64 CSR offsets into rated_*
    rated_items.npy    [R] int32  item index (row of items.npy) of each of
                                  the user's known ratings: the support set
                                  first (oldest to newest), then the older
                                  ratings left out by data.max_support
    rated_ratings.npy  [R]        float32 ratings
    support_sizes.npy  [U]        int32: the first support_sizes[u] rated
                                  rows of user u are its support set
    items.npy          [I]        external item ids: the catalogue
    item/NAME.npy      [I(, L)]   int32 item feature indices
    implicit_pool.npy  [P] int64  implicit exports only: the items support
                                  sets draw negatives from (the training ones)
    user_table/ids.npy [T]        the dataset's user table (external ids)
    user_table/NAME.npy [T(, L)]  its user feature indices, for serving-time
                                  adaptation of users that were not exported
    params/meta/PATH.npy          float32 meta-parameters: every leaf once
    params/inner/PATH.npy         float32 learned inner-loop parameters
                                  (metasgd, mamlpp)
    params/adapted/PATH.npy [U, ...]  each user's adapted leaves, stacked:
                                  float32, or bfloat16 stored as its uint16
                                  bit patterns (numpy has no bfloat16;
                                  `decode` views them back through ml_dtypes)
    topk.jsonl                    with --top_k: one JSON object per user
    topk_items.npy     [U, K]     with --top_k: int32 item index (row of
                                  items.npy) of each user's K best, best
                                  first (-1 past a user's candidates)
    topk_scores.npy    [U, K]     float32 their scores (-inf past them)

PATH is a parameter's '/'-joined path (`decision/fc1/kernel`), so a leaf's
file sits in nested folders. Only the per-user adapted leaves take the
requested dtype; the meta-parameters stay float32 so that unknown users and
serving-time adaptation are exact.

The folder is built as a hidden sibling `.NAME.tmp-*` and renamed into
place as the last step: a killed export leaves `--out` absent or holding the
previous complete export, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import time
from typing import Any

import ml_dtypes
import numpy as np

from metarec_jax import atomic
from metarec_jax.errors import InputError
from metarec_jax.export import checksums

FORMAT_NAME = "metarec-export"
# 2: the manifest records every file's size and digests. Format 1 (no
# digests) still loads, unverified, with a warning. 3: `manifest.sha256`
# holds the manifest's own digest (`sha256sum -c` format), so an edited
# record or value in it is found too.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
# Implicit exports: the items serving-time adaptation draws negatives from.
IMPLICIT_POOL = "implicit_pool.npy"
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
TOPK_FILE = "topk.jsonl"
DTYPES = ("float32", "bfloat16")

# Per-user flag bits (flags.npy).
NOT_IN_USER_TABLE = 1  # not in the dataset's user table: missing features
NO_RATINGS = 2         # no known rating: the adapted leaves are the meta ones
TRUNCATED = 4          # more than max_support ratings: the most recent used
SKIPPED_ITEMS = 8      # some ratings were of items not in the catalogue
# Ratings, none of which counts (`compute.counts`: fewer than the model's
# validated `warm_min_support`, or new items' alone, fewer than its
# `new_item_min_support`, or a config that adapts nothing); served as a
# user without any.
UNCOUNTED = 16
FLAGS = {"not_in_user_table": NOT_IN_USER_TABLE, "no_ratings": NO_RATINGS,
         "truncated": TRUNCATED, "skipped_items": SKIPPED_ITEMS,
         "uncounted": UNCOUNTED}
# The flags of users whose parameters are not a personal adaptation on
# their own features and ratings: `flagged_users` counts these. The other
# two bits are informational (the user is adapted on its known ratings).
ODD = NOT_IN_USER_TABLE | NO_RATINGS | UNCOUNTED
# A model served as that of a user without ratings (the meta-parameters').
IMPERSONAL = NO_RATINGS | UNCOUNTED


def leaf_file(group: str, path: str) -> str:
  """`params/<group>/<path>.npy` (group: meta, inner or adapted)."""
  return f"params/{group}/{path}.npy"


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
  """float32 values -> the stored array of `dtype` (bf16 as uint16 bits)."""
  if dtype == "bfloat16":
    return np.asarray(values, np.float32).astype(
        ml_dtypes.bfloat16).view(np.uint16)
  return np.asarray(values, np.float32)


def decode(stored: np.ndarray, dtype: str) -> np.ndarray:
  """A stored array (or a row of one) -> float32 values."""
  if dtype == "bfloat16":
    return np.asarray(stored).view(ml_dtypes.bfloat16).astype(np.float32)
  return np.asarray(stored, np.float32)


def storage_dtype(dtype: str):
  """The numpy dtype of the stored adapted leaves."""
  return np.uint16 if dtype == "bfloat16" else np.float32


def is_export(path: str) -> bool:
  """Whether `path` holds a complete export folder."""
  try:
    with open(os.path.join(path, MANIFEST)) as f:
      return json.load(f).get("format") == FORMAT_NAME
  except (OSError, ValueError, AttributeError):
    return False


def read_manifest(path: str) -> dict[str, Any]:
  """The manifest of the export folder `path`.

  Raises:
    InputError: not an export folder, or one of another format version;
      `checksums.DamagedExport` where the manifest is not JSON.
  """
  file = os.path.join(path, MANIFEST)
  try:
    with open(file, "rb") as f:
      data = f.read()
    manifest = json.loads(data)
  except FileNotFoundError:
    raise InputError("not a metarec export (no manifest.json)",
                     path=path) from None
  except ValueError as e:  # cut short or overwritten: damaged
    raise checksums.DamagedExport(f"unreadable manifest: {e}",
                                  path=file) from None
  except OSError as e:
    raise InputError(f"unreadable manifest: {e}", path=file) from None
  _check_manifest_digest(path, data, manifest)
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
    raise InputError("not a metarec export manifest", path=file)
  if manifest.get("version") not in READABLE_VERSIONS:
    raise InputError(f"export format version {manifest.get('version')!r};"
                     " this version reads"
                     f" {', '.join(map(str, READABLE_VERSIONS))}: export"
                     " again", path=file)
  if manifest["version"] >= 2 and not isinstance(manifest.get("files"), dict):
    raise InputError("manifest without its file records", path=file)
  return manifest


def _manifest_digest_line(data: bytes) -> str:
  return f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}\n"


def _check_manifest_digest(path: str, data: bytes, manifest: Any) -> None:
  """Raises DamagedExport where `manifest.sha256` (format 3 on) is missing
  or does not match the manifest's bytes."""
  digest = os.path.join(path, MANIFEST_DIGEST)
  try:
    with open(digest, encoding="utf-8") as f:
      recorded = f.read()
  except FileNotFoundError:
    if isinstance(manifest, dict) and isinstance(
        manifest.get("version"), int) and manifest["version"] >= 3:
      raise checksums.DamagedExport(
          "missing: the manifest's digest; the export is damaged; export"
          " again", path=digest) from None
    return
  except (OSError, UnicodeDecodeError) as e:
    raise checksums.DamagedExport(f"unreadable ({e}); the export is"
                                  " damaged; export again",
                                  path=digest) from None
  if not re.fullmatch(rf"[0-9a-f]{{64}}  {re.escape(MANIFEST)}\n", recorded):
    raise checksums.DamagedExport(  # not the line sha256sum writes
        f"not a sha256 line of {MANIFEST}: the export is damaged; export"
        " again", path=digest)
  if recorded != _manifest_digest_line(data):
    raise checksums.DamagedExport(
        f"differs from the digest in {MANIFEST_DIGEST}: the export is"
        " damaged; export again", path=os.path.join(path, MANIFEST))


def verify(path: str | os.PathLike) -> dict[str, Any]:
  """Checks every file of the export folder `path`, whole, against its
  manifest (no model is built). Returns `{"files", "bytes", "seconds"}`.

  Raises:
    checksums.DamagedExport: naming the first file that does not match.
    InputError: not an export, or one of format 1 (nothing recorded).
  """
  t0 = time.perf_counter()
  path = os.fspath(path)
  manifest = read_manifest(path)
  hashed = checksums.check_manifest(path, manifest, everything=True)
  return {"files": len(manifest["files"]), "bytes": hashed,
          "seconds": round(time.perf_counter() - t0, 3)}


class ExportWriter(atomic.Folder):
  """Builds an export folder beside `out` and renames it into place.

  Usage:

      with ExportWriter(out) as w:
        w.save_array("users.npy", ids)
        adapted = w.open("params/adapted/x.npy", np.float32, (n, 4))
        ...
        w.finish(manifest)

  Leaving the block without `finish` removes the temporary folder; one left
  by a killed process (`.NAME.tmp-*`) is removed by the next writer.

  Raises:
    InputError: `out` exists and is neither empty nor an earlier export
      (so an export never replaces somebody's other folder).
  """

  def __init__(self, out: str | os.PathLike):
    super().__init__(out)
    atomic.refuse_other(self.out, is_export, "exists and is not an earlier"
                        " export; choose another --out")
    self._mapped: list[MappedArray] = []

  def __exit__(self, exc_type, exc, tb):
    self.close_mapped()
    return super().__exit__(exc_type, exc, tb)

  def open(self, name: str, dtype, shape) -> np.ndarray:
    """A writable memory-mapped `.npy` file (filled in place).

    The pages written through it are handed back to the kernel by
    `release()`, so a process filling gigabytes keeps only what it wrote
    since the last release resident.
    """
    mapped = MappedArray(self.path(name), dtype, tuple(shape))
    self._mapped.append(mapped)
    return mapped.array

  def release(self) -> None:
    """Flushes every open mapped file and drops its pages from memory."""
    for mapped in self._mapped:
      mapped.release()

  def close_mapped(self) -> None:
    """Flushes and closes every mapped file (its arrays become invalid)."""
    for mapped in self._mapped:
      mapped.close()
    self._mapped = []

  def size(self) -> int:
    """Bytes written so far."""
    total = 0
    for root, _, files in os.walk(self.tmp):
      total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total

  def finish(self, manifest: dict[str, Any]) -> None:
    """Writes the manifest, with every file's size and digests, and swaps
    the folder into place."""
    self.close_mapped()
    files = checksums.record(self.tmp, exclude=(MANIFEST,))
    data = self.write_json(MANIFEST, {"format": FORMAT_NAME,
                                      "version": FORMAT_VERSION, **manifest,
                                      "files": files})
    self.write_file(MANIFEST_DIGEST, _manifest_digest_line(data).encode())
    self.swap()


class MappedArray:
  """A `.npy` file filled in place through a shared memory map.

  `np.lib.format.open_memmap` alone keeps every page written resident (a
  100,000-user export held its 8 GB of parameters in RSS); this one can hand
  written pages back: the mapping is shared, so they already live in the
  file's page cache and `MADV_DONTNEED` only unmaps them.
  """

  def __init__(self, path: str, dtype, shape: tuple[int, ...]):
    offset = atomic.allocate_npy(path, dtype, shape)  # no SIGBUS when full
    self._file = open(path, "r+b")  # pylint: disable=consider-using-with
    self._mmap = mmap.mmap(self._file.fileno(), 0)
    self.array = np.ndarray(shape, dtype, buffer=self._mmap, offset=offset)

  def release(self) -> None:
    """Writes the dirty pages back and drops the mapping's resident pages."""
    self._mmap.flush()
    if hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
      self._mmap.madvise(mmap.MADV_DONTNEED)

  def close(self) -> None:
    if self._mmap.closed:
      return
    self._mmap.flush()
    self.array = None
    try:
      self._mmap.close()
    except BufferError:  # a caller still holds a view (an export failed
      pass               # midway): the mapping closes when it is freed
    self._file.close()
