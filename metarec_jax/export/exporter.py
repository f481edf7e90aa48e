"""`metarec export`: adapt every user of a ratings file, write the folder.

1. Read the work directory's config (plus overrides) and its store, and the
   ratings file in the dataset's input format (a malformed file fails here,
   before anything is computed or written).
2. Group the ratings into users (`users.collect`: support sets, flags,
   skipped users and items); restore the best validated checkpoint (else
   the newest, or `step`).
3. In a temporary folder beside `out`: write the catalogue, the user tables
   and the meta-parameters, then adapt the users in fixed-size chunks (by
   support width bucket, so each compiles once; a bucket's last chunk is
   padded with empty users) into memory-mapped `[num_users, ...]` arrays;
   with `top_k`, rank the catalogue for the same chunk on the device. A
   chunk is dispatched before the previous one is written.
4. Write the manifest and rename the folder into place.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Iterable

import jax
import numpy as np

from metarec_jax import config_io, experiment, runtime
from metarec_jax.data import implicit
from metarec_jax.data.convert import parsing, ratings_io
from metarec_jax.data.splits import ragged_arange
from metarec_jax.data.tasks import (FeatureTables, bucket_widths,
                                    power_of_two, scatter_rows)
from metarec_jax.errors import InputError
from metarec_jax.export import compute, layout, topk
from metarec_jax.export import users as users_lib
from metarec_jax.workdir.progress import UserProgress
from metarec_jax.meta import paths
from metarec_jax.workdir.restore import load_state
from metarec_jax.workdir import resume

log = logging.getLogger("metarec")

RELEASE_BYTES = 64 << 20  # written bytes between page releases


def check_options(*, top_k: int, dtype: str, chunk_users: int,
                  unknown_users: str) -> None:
  """Raises `InputError` naming the flag of a bad option."""
  if dtype not in layout.DTYPES:
    raise InputError(f"must be one of {', '.join(layout.DTYPES)}, got"
                     f" {dtype!r}", path="--dtype")
  if top_k < 0:
    raise InputError(f"must be >= 0, got {top_k}", path="--top_k")
  if chunk_users < 1:
    raise InputError(f"must be >= 1, got {chunk_users}", path="--chunk_users")
  if unknown_users not in users_lib.UNKNOWN_USERS:
    raise InputError(f"must be one of {', '.join(users_lib.UNKNOWN_USERS)},"
                     f" got {unknown_users!r}", path="--unknown_users")


def export_workdir(workdir: str, ratings: str, out: str, *, top_k: int = 0,
                   dtype: str = "float32", step: int | None = None,
                   chunk_users: int = 256, unknown_users: str = "serve",
                   overrides: Iterable[tuple[str, str]] = ()) -> dict:
  """Exports every user of `ratings`, adapted from `workdir`'s checkpoint.

  Args:
    workdir: a `metarec train` work directory.
    ratings: a ratings file in the dataset's input format; each user's
      known ratings (at most `data.max_support`, the most recent) are its
      support set.
    out: the export folder to write (replaced if it holds an earlier
      export).
    top_k: also write each user's `top_k` best unrated items (`topk.jsonl`).
    dtype: `float32` or `bfloat16` for the per-user adapted leaves.
    step: the checkpoint step (default: the best validated, else the newest).
    chunk_users: users adapted per device call (bounds the memory used; at
      most the users' count rounded up to a power of two, then rounded up
      to a multiple of the device count).
    unknown_users: `serve` (missing features, flagged) or `skip` users who
      are not in the dataset's user table.
    overrides: `(dotted key, text)` config overrides, e.g.
      `("data.max_support", "100")`.

  Returns:
    The summary of docs/design.md (`users`, `seconds`, `bytes_per_user`, `out`,
    `flagged_users`, `skipped_users`, `skipped_items`) and more.

  Raises:
    InputError: a bad option, work directory, checkpoint or ratings file,
      or an `out` that is not an earlier export.
  """
  t0 = time.perf_counter()
  check_options(top_k=top_k, dtype=dtype, chunk_users=chunk_users,
                unknown_users=unknown_users)
  writer = layout.ExportWriter(out)  # a foreign `out`: refused before work
  config = resume.reader_config(workdir, overrides)
  exp = experiment.build(config, workdir, log=log.info)
  max_support = int(config.data.max_support)
  if max_support < 1:
    raise InputError(f"must be >= 1, got {max_support}",
                     path="--config.data.max_support")
  rows = ratings_io.parse_in_format(ratings, exp.store, bad_ids="skip")
  if rows.first_bad_id is not None:
    log.warning("%s (its rating lines are skipped, as for unknown ids, and"
                " counted)", rows.first_bad_id.message)
  users = users_lib.collect(
      rows.users, rows.items, rows.ratings, rows.time_order,
      known_users=exp.store.user_ids, known_items=exp.store.item_ids,
      max_support=max_support, unknown_users=unknown_users,
      bad_users=rows.bad_users, bad_items=rows.bad_items,
      bad_user_ids=rows.bad_user_ids)
  log.info("%s: %d ratings of %d users to export (%d skipped), %d ratings"
           " of unknown items skipped", ratings, len(rows.users), len(users),
           users.counts["skipped_users"], users.counts["skipped_items"])
  clock = parsing.clock_of_file(rows.clock, rows.timestamps)  # None: no times
  del rows  # only `users` is needed from here on
  mesh = runtime.make_mesh()
  state = load_state(exp, workdir, mesh, step=step)
  step = int(jax.device_get(state.step))
  with writer as w:
    job = _Job(exp, users, w, mesh, dtype=dtype, top_k=top_k,
               chunk_users=chunk_users)
    job.write_tables()
    job.write_params(state.params)
    job.run(state.params)
    summary = job.summary()
    summary.update(step=step, seconds=None, out=writer.out)
    w.finish(job.manifest(config, summary, workdir=workdir, ratings=ratings,
                          unknown_users=unknown_users, clock=clock))
  summary["seconds"] = round(time.perf_counter() - t0, 3)
  summary["peak_rss_mb"] = runtime.peak_rss_mb()
  return summary


@dataclasses.dataclass
class _Job:
  """One export's state while it writes the temporary folder."""

  exp: experiment.Experiment
  users: users_lib.Users
  writer: layout.ExportWriter
  mesh: object
  dtype: str
  top_k: int
  chunk_users: int

  def __post_init__(self):
    self.per_user_files, self.unreleased = [], 0
    n_dev = self.mesh.devices.size
    wanted = min(self.chunk_users, power_of_two(len(self.users)))
    self.chunk = max(n_dev, math.ceil(wanted / n_dev) * n_dev)
    self.k = min(self.top_k, self.exp.store.num_items)
    tables = self.exp.tables
    index = np.maximum(self.users.table_index, 0)
    absent = self.users.table_index < 0
    user_rows = {}
    for name, table in tables.user.items():
      values = np.asarray(table)[index]
      values[absent] = 0  # the "missing" index of every feature
      user_rows[name] = values
    # Feature rows of the exported users (row = position in users.ids).
    self.tables = FeatureTables(tables.specs, user_rows, tables.item)
    self.fns = compute.ChunkFunctions(self.exp.model, self.exp.meta_config,
                                      self.mesh, dtype=self.dtype, k=self.k)

  def _save(self, name: str, array, per_user: bool = False) -> None:
    self.writer.save_array(name, array)
    if per_user:
      self.per_user_files.append(name)

  def write_tables(self) -> None:
    u, store = self.users, self.exp.store
    if self.exp.implicit.enabled:  # serving-time adaptation draws from it
      self._save(layout.IMPLICIT_POOL, implicit.item_pools(store)[0])
    for name, values in (("users", u.ids),
                         ("rated_offsets", u.offsets), ("rated_items", u.items),
                         ("rated_ratings", u.ratings),
                         ("support_sizes", u.support_sizes)):
      self._save(f"{name}.npy", values, True)
    for name, values in self.tables.user.items():
      self._save(f"user/{name}.npy", values, True)
    self._save("items.npy", np.asarray(store.item_ids))
    for name, values in self.tables.item.items():
      self._save(f"item/{name}.npy", values)
    self._save("user_table/ids.npy", np.asarray(store.user_ids))
    for name, values in self.exp.tables.user.items():
      self._save(f"user_table/{name}.npy", values)

  def write_params(self, meta_params) -> None:
    params, inner = meta_params["model"], meta_params.get("inner")
    self.meta_paths = list(paths.leaf_paths(params))
    for path, leaf in _flat(params).items():
      self._save(layout.leaf_file("meta", path), leaf)
    self.inner_paths = []
    if inner is not None:
      for path, leaf in _flat(inner).items():
        self._save(layout.leaf_file("inner", path), leaf)
        self.inner_paths.append(path)
    part = paths.partition(params, self.exp.meta_config.adapt)
    self.adapted = {}
    for path, leaf in part.adapted.items():
      name = layout.leaf_file("adapted", path)
      self.adapted[path] = self.writer.open(
          name, layout.storage_dtype(self.dtype),
          (len(self.users),) + tuple(leaf.shape))
      self.per_user_files.append(name)
    self.adapted_shapes = {p: list(v.shape) for p, v in part.adapted.items()}
    if self.k:
      self.top_items = self.writer.open("topk_items.npy", np.int32,
                                        (len(self.users), self.k))
      self.top_scores = self.writer.open("topk_scores.npy", np.float32,
                                         (len(self.users), self.k))
      self.per_user_files += ["topk_items.npy", "topk_scores.npy"]

  def _chunks(self):
    """(user rows, support width) of every chunk, by width bucket."""
    buckets = tuple(int(b) for b in self.exp.config.data.buckets)
    widths = bucket_widths(self.users.support_sizes, buckets)
    for width in np.unique(widths):
      members = np.flatnonzero(widths == width)
      for lo in range(0, len(members), self.chunk):
        yield members[lo:lo + self.chunk], int(width)

  def _batch(self, index: np.ndarray, width: int):
    """The padded support batch, user features and rated items of a chunk."""
    u, c = self.users, self.chunk
    sizes = u.support_sizes[index].astype(np.int64)
    starts = u.offsets[index]
    rows = ragged_arange(starts, sizes)
    task = np.repeat(np.arange(len(index)), sizes)
    slot = rows - np.repeat(starts, sizes)
    items = scatter_rows(task, slot, u.items[rows], c, width)
    ratings = scatter_rows(task, slot, u.ratings[rows], c, width)
    mask = scatter_rows(task, slot, np.ones(len(rows), bool), c, width, False)
    slots = np.zeros(c, np.int64)
    slots[:len(index)] = index
    counts = u.rated_counts()[index]
    rated_width = power_of_two(counts.max(initial=0))
    rows = ragged_arange(starts, counts)
    task = np.repeat(np.arange(len(index)), counts)
    slot = rows - np.repeat(starts, counts)
    rated = scatter_rows(task, slot, u.items[rows], c, rated_width, fill=-1)
    spec = self.exp.implicit
    if spec.enabled:  # positives, then negatives keyed by the support
      items, ratings, mask = implicit.labelled_support(
          items, ratings, mask, rated, spec=spec,
          pool=implicit.item_pools(self.exp.store)[0],
          num_items=self.exp.store.num_items,
          row_keys=implicit.support_keys(items, mask))
    support = self.tables.rows(slots, items, ratings, mask)
    if not self.k:
      return support, None
    features = {name: values[slots] for name, values in self.tables.user.items()}
    return support, (features, rated)

  def _item_blocks(self):
    """The catalogue's feature rows in `[blocks, B]` (replicated)."""
    return jax.device_put(compute.catalogue_blocks(
        self.tables.item, self.exp.store.num_items), self.fns.replicated)

  def run(self, meta_params) -> None:
    params, inner = meta_params["model"], meta_params.get("inner")
    blocks = self._item_blocks() if self.k else None
    pending = None
    self.adapt_seconds = time.perf_counter()
    with UserProgress(len(self.users), log=log) as progress:
      for index, width in self._chunks():
        support, rank_inputs = self._batch(index, width)
        support = jax.device_put(support, self.fns.task_sharding)
        stored, fast, finite, counts = self.fns.adapt(params, inner,
                                                      support)
        top = None
        if self.k:
          features, rated = jax.device_put(rank_inputs,
                                           self.fns.task_sharding)
          top = self.fns.top_k(params, fast, features, rated, *blocks)
        if pending is not None:
          progress.advance(self._write(*pending))
        pending = (index, stored, top, finite, counts)
      if pending is not None:
        progress.advance(self._write(*pending))
    self.writer.release()
    # Written once every chunk has said whose ratings count (`_write`).
    self._save("flags.npy", self.users.flags, True)
    self.adapt_seconds = time.perf_counter() - self.adapt_seconds
    if self.k:
      topk.write_jsonl(self.writer.path(layout.TOPK_FILE), self.users.ids,
                       np.asarray(self.exp.store.item_ids), self.top_scores,
                       self.top_items)
      self.per_user_files.append(layout.TOPK_FILE)
    # The writer closes the mapped files: hold no view of them.
    self.adapted_bytes = sum(a.nbytes for a in self.adapted.values())
    self.adapted = self.top_items = self.top_scores = None

  def _write(self, index, stored, top, finite, counts) -> int:
    n = len(index)
    scores, items, bad = (None,) * 3 if top is None else jax.device_get(top)
    compute.check_finite(np.asarray(self.users.ids)[index],
                         jax.device_get(finite)[:n],
                         None if bad is None else bad[:n],
                         self.exp.meta_config)
    flags = self.users.flags  # saved after the last chunk (`run`)
    rated = (flags[index] & layout.NO_RATINGS) == 0
    flags[index[rated & ~np.asarray(jax.device_get(counts))[:n]]] |= (
        layout.UNCOUNTED)
    for path, value in jax.device_get(stored).items():
      self.adapted[path][index] = value[:n]
      self.unreleased += value[:n].nbytes
    if top is not None:
      self.top_scores[index] = scores[:n]
      self.top_items[index] = items[:n]
    # Memory bounded by the chunk, not the export: hand the written pages
    # back to the kernel every RELEASE_BYTES.
    if self.unreleased >= RELEASE_BYTES:
      self.writer.release()
      self.unreleased = 0
    return n

  def summary(self) -> dict:
    u = self.users
    n = len(u)
    adapted_bytes = self.adapted_bytes
    per_user = sum(os.path.getsize(os.path.join(self.writer.tmp, f))
                   for f in self.per_user_files)
    return {
        "users": n, "seconds": None,
        "bytes_per_user": round(per_user / n, 1) if n else None,
        "out": None,
        "flagged_users": int(((u.flags & layout.ODD) != 0).sum()),
        "skipped_users": u.counts["skipped_users"],
        "skipped_items": u.counts["skipped_items"],
        "duplicate_ratings": u.counts["duplicate_ratings"],
        "flags": users_lib.flag_counts(u.flags),
        "items": int(self.exp.store.num_items),
        "dtype": self.dtype, "top_k": self.k, "chunk_users": self.chunk,
        "max_support": int(self.exp.config.data.max_support),
        "adapted_bytes_per_user": round(adapted_bytes / n, 1) if n else None,
        "total_bytes": self.writer.size(),
        "adapt_seconds": round(self.adapt_seconds, 3),
        "compiles": self.fns.compiles,
        "compile_seconds": round(self.fns.compile_seconds, 3),
    }

  def manifest(self, config, summary: dict, *, workdir: str, ratings: str,
               unknown_users: str, clock: parsing.FileClock | None) -> dict:
    exp = self.exp
    mc = dataclasses.asdict(exp.meta_config)
    return {
        "num_users": len(self.users), "num_items": exp.store.num_items,
        "dtype": self.dtype, "step": summary["step"],
        "workdir": os.path.abspath(workdir),
        "ratings": os.path.abspath(ratings),
        "dataset": exp.store.manifest["dataset"],
        "rating_min": exp.store.rating_range[0],
        "rating_max": exp.store.rating_range[1],
        # The mean the model was built with (serving rebuilds it so).
        "rating_mean": exp.rating_mean,
        "features": [s.to_json() for s in self.tables.specs],
        "user_features": sorted(self.tables.user),
        "item_features": sorted(self.tables.item),
        "params": {"meta": self.meta_paths,
                   "adapted": self.adapted_shapes,
                   "inner": self.inner_paths},
        "meta_config": mc,
        "max_support": int(config.data.max_support),
        "buckets": [int(b) for b in config.data.buckets],
        "support": ("the most recent max_support known ratings, by timestamp"
                    if clock else
                    "the last max_support known ratings in file order"),
        "unknown_users": unknown_users,
        # The input format, so that a server's interaction log is written
        # in it (and `metarec train`/`export` read the log back).
        "ratings_format": ratings_io.store_format(exp.store).to_json(),
        "ratings_timestamps": clock is not None,  # parsing.clock_of_file:
        "ratings_clock": clock and clock.unit,  # how the log writes a time
        "ratings_latest": clock and clock.latest,  # after the file's newest
        "flags": layout.FLAGS,
        "top_k": self.k,
        "summary": {k: v for k, v in summary.items()
                    if k not in ("seconds", "out")},
        "config": config_io.to_dict(config),
        # Implicit: scores are logits; a rating >= threshold is a positive;
        # supports get negatives from layout.IMPLICIT_POOL, as in training.
        "implicit": (dataclasses.asdict(exp.implicit)
                     if exp.implicit.enabled else None),
    }


def _flat(tree) -> dict[str, np.ndarray]:
  """`{path: host array}` of a pytree's leaves."""
  leaves = jax.device_get(jax.tree.leaves(tree))
  return dict(zip(paths.leaf_paths(tree), (np.asarray(l) for l in leaves)))
