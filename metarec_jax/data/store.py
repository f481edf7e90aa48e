"""The task store: per-user rating lists on disk, memory-mapped.

Layout of a store folder (all arrays are `.npy`, opened with `mmap_mode="r"`
so that training, evaluation and export never load more than they touch):

    manifest.json            format version, counts, rating scale, schema
    user_ids.npy   [U]       external user ids (int64 or unicode)
    item_ids.npy   [I]       external item ids
    offsets.npy    [U+1]     int64 CSR offsets of each user's ratings
    items.npy      [R]       int32 item index of each rating
    ratings.npy    [R]       float32 rating
    timestamps.npy [R]       int64 (only when the source has them)
    item_new.npy   [I]       bool: the item is "new" in the cold-start protocol
    interacted.npy [K]       int64 sorted user * I + item of every interaction
                             (implicit stores only, see data.implicit)
    user/NAME.npy  [U] or [U, L]   int32 user feature indices (0 = missing)
    item/NAME.npy  [I] or [I, L]   int32 item feature indices (0 = missing)
    vocab/NAME.json          the category of each index of a feature

A store is written into a temporary sibling folder and renamed into place
as the last step, so a reader never sees a half-written store.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from metarec_jax import atomic, integrity
from metarec_jax.data.schema import FeatureSpec
from metarec_jax.errors import InputError

FORMAT_VERSION = 1


@dataclasses.dataclass
class TaskStore:
  """A read-only, memory-mapped task store."""

  path: str
  manifest: dict[str, Any]
  user_ids: np.ndarray
  item_ids: np.ndarray
  offsets: np.ndarray
  items: np.ndarray
  ratings: np.ndarray
  timestamps: np.ndarray | None
  item_new: np.ndarray
  user_features: dict[str, np.ndarray]
  item_features: dict[str, np.ndarray]
  interacted: np.ndarray | None = None

  @property
  def features(self) -> tuple[FeatureSpec, ...]:
    return tuple(FeatureSpec.from_json(f) for f in self.manifest["features"])

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  @property
  def num_ratings(self) -> int:
    return len(self.items)

  @property
  def rating_range(self) -> tuple[float, float]:
    return (float(self.manifest["rating_min"]),
            float(self.manifest["rating_max"]))

  def counts(self) -> np.ndarray:
    """Number of ratings of every user, int64 [U]."""
    return np.diff(self.offsets)

  def vocab(self, name: str) -> list[str]:
    with open(os.path.join(self.path, "vocab", f"{name}.json")) as f:
      return json.load(f)


def open_store(path: str | os.PathLike) -> TaskStore:
  """Opens a store folder written by `StoreWriter`.

  Raises:
    InputError: the folder is not a complete store of a known format.
  """
  path = os.fspath(path)
  manifest_path = os.path.join(path, "manifest.json")
  if not os.path.exists(manifest_path):
    raise InputError("not a task store (no manifest.json); build one with"
                     " `metarec data prepare`", path=path)
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"unreadable manifest: {e}", path=manifest_path) from e
  if manifest.get("format") != FORMAT_VERSION:
    raise InputError(
        f"store format {manifest.get('format')!r}, this version reads"
        f" {FORMAT_VERSION}; rebuild it with `metarec data prepare`",
        path=manifest_path)

  def load(name):
    file = os.path.join(path, name)
    try:
      return np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
      raise InputError(f"unreadable store array: {e}", path=file) from e

  specs = [FeatureSpec.from_json(f) for f in manifest["features"]]
  has_ts = os.path.exists(os.path.join(path, "timestamps.npy"))
  has_interacted = os.path.exists(os.path.join(path, "interacted.npy"))
  store = TaskStore(
      path=path, manifest=manifest,
      user_ids=load("user_ids.npy"), item_ids=load("item_ids.npy"),
      offsets=load("offsets.npy"), items=load("items.npy"),
      ratings=load("ratings.npy"),
      timestamps=load("timestamps.npy") if has_ts else None,
      item_new=load("item_new.npy"),
      user_features={s.name: load(f"user/{s.name}.npy")
                     for s in specs if s.side == "user"},
      item_features={s.name: load(f"item/{s.name}.npy")
                     for s in specs if s.side == "item"},
      interacted=load("interacted.npy") if has_interacted else None)
  _check_structure(store)
  _check_ratings(store)
  return store


def _check_ratings(store: TaskStore) -> None:
  """Raises InputError where a rating is not finite or off the store's
  scale: a rating of 3e9 trained and evaluated in silence, a NaN gave only
  "non-finite loss" (helper D). An implicit store's ratings are its
  positives, 1; a rating store's lie on its scale (conversion refuses any
  other). NaN fails every comparison."""
  lo, hi = ((1.0, 1.0) if store.manifest.get("implicit")
            else store.rating_range)
  # In the ratings' float32: a scale bound float32 cannot hold (0.8) is
  # stored as the nearest, which may lie beyond it (reviewer R).
  ratings = np.asarray(store.ratings)
  if len(ratings) and not (ratings.dtype.type(lo) <= np.min(ratings)
                           and np.max(ratings) <= ratings.dtype.type(hi)):
    _invalid(store, "ratings.npy", "ratings must be finite and on the scale"
             f" {lo:g} to {hi:g} of its manifest")


def _invalid(store: TaskStore, name: str, problem: str) -> None:
  """Raises the InputError of a store whose array `name` has `problem`."""
  raise InputError(f"not a valid store ({problem}); rebuild it with"
                   " `metarec data prepare`",
                   path=os.path.join(store.path, name))


def _check_structure(store: TaskStore) -> None:
  """Raises InputError where the arrays do not fit together (a damaged or
  hand-edited store): a wrong offset or item index is no error later (JAX
  clamps an index out of range), only wrong figures."""
  users, items = len(store.user_ids), len(store.item_ids)
  offsets = np.asarray(store.offsets)
  n = len(store.items)
  if len(offsets) != users + 1:
    _invalid(store, "offsets.npy",
             f"{len(offsets):,} offsets for {users:,} users")
  if len(offsets) and (offsets[0] != 0 or offsets[-1] != n
                       or (np.diff(offsets) < 0).any()):
    _invalid(store, "offsets.npy", "offsets must start at 0, never decrease"
             f" and end at the {n:,} ratings")
  for name, array in (("ratings.npy", store.ratings),
                      ("timestamps.npy", store.timestamps)):
    if array is not None and len(array) != n:
      _invalid(store, name, f"{len(array):,} rows for {n:,} ratings")
  if len(store.item_new) != items:
    _invalid(store, "item_new.npy",
             f"{len(store.item_new):,} rows for {items:,} items")
  if n and (int(np.min(store.items)) < 0 or int(np.max(store.items)) >= items):
    _invalid(store, "items.npy", f"item indices must be 0 to {items - 1:,}")
  for side, tables, rows in (("user", store.user_features, users),
                             ("item", store.item_features, items)):
    for name, table in tables.items():
      if len(table) != rows:
        _invalid(store, f"{side}/{name}.npy",
                 f"{len(table):,} rows for {rows:,} {side}s")


def is_store(path: str | os.PathLike) -> bool:
  """Whether `path` holds a store: its manifest (an integer format version,
  a dataset) and its rating arrays. (An export's manifest has a `format`
  too.)"""
  try:
    with open(os.path.join(path, "manifest.json")) as f:
      manifest = json.load(f)
    return (isinstance(manifest.get("format"), int)
            and "dataset" in manifest
            and all(os.path.isfile(os.path.join(path, name))
                    for name in ("offsets.npy", "items.npy", "ratings.npy")))
  except (OSError, ValueError, TypeError, AttributeError):
    return False


def refuse_non_store(out: str | os.PathLike) -> None:
  """Raises `InputError` where `out` exists and is neither an empty folder
  nor an earlier store: what a store's writer may not replace; or where a
  file stands on its way (`data/ratings.csv/store`)."""
  atomic.refuse_other(out, is_store, "exists and is not a task store; a"
                      " store needs a folder of its own: move that away, or"
                      " choose another (`data`'s --out, or `data.store` for"
                      " `train`)")
  # A file where a folder above `out` goes: the writer could not make it
  # ("File exists", exit 1, and only after the whole input was read).
  atomic.refuse_file_in_the_way(out, named=os.fspath(out))


class StoreWriter(atomic.Folder):
  """Writes a store into a temporary folder and renames it into place.

  Usage:

      with StoreWriter(out) as w:
        w.save_array("items.npy", items)
        ratings = w.open_array("ratings.npy", np.float32, (n,))  # fill it
        ...
        w.finish(manifest)

  Leaving the block without `finish` (an exception, a kill) leaves `out`
  untouched; the temporary folder is removed on exceptions and named
  `.NAME.tmp-*` so that a later writer cleans up after a killed one.

  Raises:
    InputError: `out` exists and is neither empty nor an earlier store (a
      data folder given as the output by mistake is never replaced).
  """

  def __init__(self, out: str | os.PathLike):
    super().__init__(out)
    refuse_non_store(self.out)

  def __enter__(self) -> "StoreWriter":
    super().__enter__()
    for folder in ("user", "item", "vocab"):
      os.makedirs(os.path.join(self.tmp, folder))
    return self

  def save_vocab(self, name: str, categories: list[str]) -> None:
    with open(os.path.join(self.tmp, "vocab", f"{name}.json"), "w") as f:
      json.dump(list(categories), f, ensure_ascii=False)

  def finish(self, manifest: dict[str, Any]) -> None:
    """Writes the manifest and swaps the folder into place."""
    super().finish("manifest.json", {"format": FORMAT_VERSION, **manifest})


def record_source_files(path: str | os.PathLike, files: dict) -> None:
  """Adds `files` (`convert.fingerprint.record`) to the manifest of the
  store at `path` as `source.files`, replacing the manifest atomically (a
  store killed before this is one without the record: its inputs go
  unchecked, as an older store's)."""
  manifest_path = os.path.join(os.fspath(path), "manifest.json")
  with open(manifest_path, encoding="utf-8") as f:
    manifest = json.load(f)
  manifest["source"] = {**manifest.get("source", {}), "files": files}
  atomic.write_text(manifest_path,
                    json.dumps(manifest, indent=1, ensure_ascii=False))


def write_store(out: str | os.PathLike, *, dataset: str,
                user_ids: np.ndarray, item_ids: np.ndarray,
                offsets: np.ndarray, items: np.ndarray, ratings: np.ndarray,
                timestamps: np.ndarray | None, item_new: np.ndarray,
                features: list[tuple[FeatureSpec, np.ndarray, list[str]]],
                rating_range: tuple[float, float],
                extra: dict[str, Any] | None = None) -> None:
  """Writes a whole in-memory dataset as a store (loaders use this).

  Args:
    features: (spec, index array of the side's rows, vocabulary) per field.
    extra: more manifest entries (source files, notes, item class rule).
  """
  with StoreWriter(out) as w:
    w.save_array("user_ids.npy", user_ids)
    w.save_array("item_ids.npy", item_ids)
    w.save_array("offsets.npy", np.asarray(offsets, np.int64))
    w.save_array("items.npy", np.asarray(items, np.int32))
    w.save_array("ratings.npy", np.asarray(ratings, np.float32))
    if timestamps is not None:
      w.save_array("timestamps.npy", np.asarray(timestamps, np.int64))
    w.save_array("item_new.npy", np.asarray(item_new, bool))
    for spec, array, vocab in features:
      w.save_array(f"{spec.side}/{spec.name}.npy", np.asarray(array, np.int32))
      w.save_vocab(spec.name, vocab)
    w.finish(manifest_for(dataset=dataset, num_users=len(user_ids),
                          num_items=len(item_ids), ratings=ratings,
                          features=[f[0] for f in features],
                          rating_range=rating_range, extra=extra))


def manifest_for(*, dataset: str, num_users: int, num_items: int,
                 ratings: np.ndarray, features: list[FeatureSpec],
                 rating_range: tuple[float, float],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """The manifest of a new task store: what it holds (dataset, sizes,
  features, rating range and counts), with `extra` fields merged in."""
  ratings = np.asarray(ratings)
  return {
      "dataset": dataset,
      "num_users": int(num_users),
      "num_items": int(num_items),
      "num_ratings": int(len(ratings)),
      "rating_min": float(rating_range[0]),
      "rating_max": float(rating_range[1]),
      "rating_mean": float(ratings.mean(dtype=np.float64))
                     if len(ratings) else float(np.mean(rating_range)),
      "features": [f.to_json() for f in features],
      **(extra or {}),
  }


def content_digest(store: TaskStore) -> str:
  """SHA-256 of a store's data: its ids, ratings, new-item flags and
  feature arrays with the features' specs. Two stores of the same data
  built anywhere have the same digest (no path is in it)."""
  arrays = [store.user_ids, store.item_ids, store.offsets, store.items,
            store.ratings, store.item_new]
  arrays += [store.user_features[n] for n in sorted(store.user_features)]
  arrays += [store.item_features[n] for n in sorted(store.item_features)]
  parts = [integrity.array_digest(np.asarray(a)) for a in arrays]
  parts.append(json.dumps(store.manifest.get("features"), sort_keys=True))
  return integrity.array_digest(np.frombuffer(
      "".join(parts).encode(), np.uint8))
