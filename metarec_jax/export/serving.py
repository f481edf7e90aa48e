"""Serving an export folder: `load(DIR)` -> predict, recommend, adapt.

    export = load("/models/melu-2024-06")
    export.predict(42, [1193, 661])             # float32 predicted ratings
    export.recommend(42, 10)                    # [(item_id, score), ...]
    user = export.adapt([(1193, 5), (661, 3)], user_id=9001)
    user.recommend(10)

Everything comes from the folder: the model is rebuilt from the config and
feature schema in its manifest, the parameters and feature tables are
memory-mapped `.npy` arrays; no work directory, checkpoint or task store is
read. Predictions and serving-time adaptation are jitted and batched over
items (padded to power-of-two sizes, so a handful of programs serve every
request size).

Users: `export.user(user_id)` is a `UserModel` whose `source` says where
its parameters come from, for a serving system to check:

- `"export"`: an exported user (`known` is True; `flags` are its export
  flags, `layout.FLAGS`);
- `"meta"`: a user who is not in the export, served from the
  meta-parameters, i.e. the model before adaptation (`known` is False;
  `Export.predict` and `Export.recommend` also log a warning). Its user
  features come from the dataset's user table when the id is there, else
  the "missing" index 0;
- `"adapted"`: the result of `Export.adapt`, adapted at serving time.

Item ids are the dataset's external ids; an id not in the catalogue is a
`KeyError` (`known_items` tests ids first). Predictions are the model's raw
outputs; `clip=True` clips them to the rating scale as `metarec eval` does.
"""

from __future__ import annotations

import functools
import logging
import numbers
import os
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from metarec_jax import config_io, config_reference, meta, models
from metarec_jax.data import implicit
from metarec_jax.data.schema import FeatureSpec
from metarec_jax.data.tasks import FeatureTables, power_of_two
from metarec_jax.errors import InputError, diverges
from metarec_jax.export import batched, catalogue, checksums, compute, layout
from metarec_jax.export import users as users_lib
from metarec_jax.export.user_model import UserModel

log = logging.getLogger("metarec")

MAX_BLOCK = 4096  # items per device call of `predict`


def load(path: str | os.PathLike, *, verify: bool = False) -> "Export":
  """Opens an export folder written by `metarec export`.

  Args:
    path: the folder.
    verify: hash every file whole against the manifest's digests, the
      per-user arrays too (by default their sizes and heads only; see
      `checksums` for what each costs).

  Raises:
    checksums.DamagedExport: a file is missing or differs from the
      manifest's record (an `InputError` naming the file).
    InputError: not a complete export of a known format version, or an
      array that cannot be read.
  """
  return Export(os.fspath(path), verify=verify)


def _bucket(n: int) -> int:
  """Padded size of a request of `n` items: a power of two, at least 16."""
  return max(16, power_of_two(n))


class Export(batched.UserBatches):
  """A loaded export folder (see `load` and the module docstring).

  Attributes:
    path: the folder.
    manifest: its manifest.json.
    user_ids: `[U]` the exported users' external ids (sorted).
    item_ids: `[I]` the catalogue.
    flags: `[U]` uint8 export flags per user (`layout.FLAGS`).
    dtype: the adapted leaves' storage dtype (`float32` or `bfloat16`).
    adapted: `{path: [U, ...]}` the stored adapted leaves (memory-mapped;
      `layout.decode` turns a row into float32).
    meta_params, inner: the meta-parameters and learned inner-loop
      parameters (None for plain MAML), memory-mapped.
    model, meta_config: the rebuilt `Recommender` and `MetaConfig`.
  """

  def __init__(self, path: str, *, verify: bool = False):
    self.path = path
    self.manifest = m = layout.read_manifest(path)
    checksums.check_manifest(path, m, everything=verify)
    self.dtype = m["dtype"]
    self.rating_range = (float(m["rating_min"]), float(m["rating_max"]))
    config = config_io.complete(m["config"])
    try:  # the rules of the keys the served model is built from (an
      # export of a newer metarec: a model name this one lacks was a
      # traceback from deep in the build); not the training-only keys,
      # whose rules have tightened since older exports were written
      config_reference.validate(ml_collections.ConfigDict(
          {"model": config.model, "meta": config.meta}), sections=())
    except InputError as e:
      raise InputError(f"{e.problem} (written by another metarec"
                       " version? serve it with that one)",
                       path=os.path.join(path, layout.MANIFEST)) from None
    specs = tuple(FeatureSpec.from_json(f) for f in m["features"])
    self.model = models.build(
        models.for_data(config.model, implicit_data=bool(m.get("implicit"))),
        specs, rating_mean=float(m["rating_mean"]),
        # The rate the run adapted at (`experiment.inner_lr`).
        inner_lr=float(m["meta_config"]["inner_lr"]),
        algorithm=m["meta_config"]["algorithm"])
    mc = {**m["meta_config"], "adapt": tuple(m["meta_config"]["adapt"]),
          "msl_weights": tuple(m["meta_config"]["msl_weights"])}
    try:
      self.meta_config = meta.MetaConfig(**mc)
    except TypeError as e:  # a newer metarec's field: was a traceback
      raise InputError(f"meta_config: {e} (written by another metarec"
                       " version? serve it with that one)",
                       path=os.path.join(path, layout.MANIFEST)) from None
    self.max_support = int(m["max_support"])
    # Implicit feedback (None: ratings): see `adapt`.
    self.implicit = (implicit.ImplicitSpec(**m["implicit"])
                     if m.get("implicit") else None)
    self._implicit_pool = (self._load(layout.IMPLICIT_POOL)
                           if self.implicit is not None else None)
    self.buckets = tuple(int(b) for b in m["buckets"])

    self.user_ids = self._load("users.npy")
    self.flags = self._load("flags.npy")
    self.rated_offsets = self._load("rated_offsets.npy")
    self.rated_items = self._load("rated_items.npy")
    self.support_sizes = self._load("support_sizes.npy")
    self.item_ids = self._load("items.npy")
    self._item_order, self._item_sorted = catalogue.sorted_index(
        self.item_ids)
    self.user_features = {n: self._load(f"user/{n}.npy")
                          for n in m["user_features"]}
    self.table_ids = self._load("user_table/ids.npy")
    self._table_order, self._table_sorted = catalogue.sorted_index(
        self.table_ids)
    self.table_features = {n: self._load(f"user_table/{n}.npy")
                           for n in m["user_features"]}
    item_tables = {n: self._load(f"item/{n}.npy") for n in m["item_features"]}
    self._tables = FeatureTables(specs, {}, item_tables)
    def leaves(kind):  # {path: array} of one kind, nested by path
      loaded = {p: self._load(layout.leaf_file(kind, p))
                for p in m["params"][kind]}
      for p, values in loaded.items():  # small: read whole (helper D's NaN)
        if not np.isfinite(values).all():
          raise InputError(
              "holds a NaN or an infinity: no trained model's parameter"
              " does (a checkpoint never holds one)",
              path=os.path.join(self.path, layout.leaf_file(kind, p)))
      return traverse_util.unflatten_dict(loaded, sep="/")

    self.meta_params = leaves("meta")
    self.adapted = {p: self._load(layout.leaf_file("adapted", p))
                    for p in m["params"]["adapted"]}
    self._meta_fast = {
        p: np.asarray(v, np.float32) for p, v in
        traverse_util.flatten_dict(self.meta_params, sep="/").items()
        if p in self.adapted}
    self.inner = leaves("inner") if m["params"]["inner"] else None
    # Device copies of what every request reads.
    self._params = jax.device_put(self.meta_params)
    self._inner = jax.device_put(self.inner)
    self._item_tables = jax.device_put(item_tables)
    model, config = self.model, self.meta_config

    def predict(params, fast, user_features, item_tables, index):
      items = {n: t[index] for n, t in item_tables.items()}
      return compute.score_items(model, params, fast, user_features, items)

    self._predict = jax.jit(predict)
    # Batched over users (a leading axis on every argument but the
    # parameters): `adapt` uses it with one user, a server with many.
    self._adapt_users = jax.jit(functools.partial(batched.adapt_users, model,
                                                  config))
    self._score_users = jax.jit(functools.partial(batched.score_users,
                                                  model))
    self._top_k_users = jax.jit(functools.partial(batched.top_k_users, model),
                                static_argnames="k")

  def _load(self, name: str) -> np.ndarray:
    file = os.path.join(self.path, name)
    try:
      return np.load(file, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # pylint: disable=broad-except
      # A damaged header raises anything from numpy's parser (ValueError,
      # EOFError, tokenize.TokenError, SyntaxError...).
      problem = str(e).splitlines()[0][:200] if str(e) else ""
      raise InputError(f"not a readable .npy array ({type(e).__name__}"
                       f"{': ' + problem if problem else ''})",
                       path=file) from None

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  # ---------------------------------------------------------------- lookup

  def user_row(self, user_id) -> int:
    """The row of an exported user, -1 if the user is not in the export."""
    return int(catalogue.lookup(None, self.user_ids,
                       np.asarray([_scalar(user_id)]))[0])

  def is_known(self, user_id) -> bool:
    return self.user_row(user_id) >= 0

  def item_index(self, item_ids: Sequence) -> np.ndarray:
    """Catalogue positions of item ids.

    Raises:
      KeyError: naming the ids that are not in the catalogue.
    """
    ids = catalogue.id_array(item_ids)
    index = catalogue.lookup(self._item_order, self._item_sorted, ids)
    if (index < 0).any():
      bad = ids[index < 0][:5].tolist()
      raise KeyError(f"item ids not in the export's catalogue: {bad}"
                     f"{' ...' if (index < 0).sum() > 5 else ''}")
    return index

  def known_items(self, item_ids: Sequence) -> np.ndarray:
    """bool mask: which ids are in the catalogue."""
    return catalogue.lookup(self._item_order, self._item_sorted,
                            catalogue.id_array(item_ids)) >= 0

  def _table_features(self, user_id) -> tuple[dict[str, np.ndarray], bool]:
    """The user table's feature row of `user_id` (zeros if absent)."""
    row = -1
    if user_id is not None:
      row = int(catalogue.lookup(self._table_order, self._table_sorted,
                        np.asarray([_scalar(user_id)]))[0])
    if row < 0:
      return {n: np.zeros(t.shape[1:], np.int32)
              for n, t in self.table_features.items()}, False
    return {n: np.asarray(t[row]) for n, t in self.table_features.items()}, True

  # ----------------------------------------------------------------- users

  def user(self, user_id) -> UserModel:
    """The model of `user_id`: exported, or the meta-parameters if unknown."""
    row = self.user_row(user_id)
    if row < 0:
      features, in_table = self._table_features(user_id)
      return UserModel(self, user_id, source="meta",
                       fast=dict(self._meta_fast),  # the user's own dict
                       user_features=features, rated=np.zeros(0, np.int64),
                       flags=(0 if in_table else layout.NOT_IN_USER_TABLE)
                       | layout.NO_RATINGS)
    fast = {p: layout.decode(v[row], self.dtype)
            for p, v in self.adapted.items()}
    lo, hi = self.rated_offsets[row], self.rated_offsets[row + 1]
    return UserModel(self, user_id, source="export", fast=fast,
                     user_features={n: np.asarray(t[row]) for n, t in
                                    self.user_features.items()},
                     rated=self.rated_items[lo:hi], flags=self.row_flags(row),
                     support_size=self.support_sizes[row])

  def _served(self, user_id) -> UserModel:
    user = self.user(user_id)
    if not user.known:
      log.warning("user %r is not in the export %s: served from the"
                  " meta-parameters", user_id, self.path)
    return user

  def predict(self, user_id, item_ids: Sequence, *,
              clip: bool = False) -> np.ndarray:
    """Predicted ratings `float32[len(item_ids)]` of a user for items."""
    return self._served(user_id).predict(item_ids, clip=clip)

  def recommend(self, user_id, k: int, candidates: Sequence | None = None
                ) -> list[tuple[Any, float]]:
    """A user's `k` best unrated items, `[(item_id, score)]`, best first."""
    return self._served(user_id).recommend(k, candidates)

  def adapt(self, ratings: Iterable[tuple[Any, float]], *,
            user_id=None) -> UserModel:
    """Adapts the meta-parameters to a user who was not exported.

    The same rules as export: unknown items are skipped (`skipped_items`),
    a repeated item keeps its last rating, and of more than `max_support`
    ratings the last ones are used (`ratings` is taken as oldest first).

    Args:
      ratings: `(item_id, rating)` pairs; an implicit export also takes
        bare item ids (positives), and a rating below its threshold is a
        known negative.
      user_id: the user's id in the dataset's user table, for its features
        (None or an id not there: the "missing" features).

    Raises:
      ValueError: not `(item_id, rating)` pairs, a rating outside the
        rating scale, or an inner loop that diverges on these ratings (its
        model is never returned).
    """
    items, values, bare = catalogue.rating_pairs(
        ratings, implicit=self.implicit is not None)
    lo, hi = self.rating_range
    # A bare item id (implicit only) is a positive, +inf; a pair's rating
    # lies on the scale, as the server's (an infinite or off-scale one
    # was silently taken as a positive or a negative).
    given = values[~bare]
    if ((given < lo) | (given > hi) | ~np.isfinite(given)).any():
      raise ValueError(f"ratings must lie on the scale {lo:g} to {hi:g}")
    features, in_table = self._table_features(user_id)
    index = catalogue.lookup(self._item_order, self._item_sorted, items)
    known = index >= 0
    skipped = int((~known).sum())
    flags = 0 if in_table else layout.NOT_IN_USER_TABLE
    if skipped:
      flags |= layout.SKIPPED_ITEMS
    # The export's own grouping rules, on this one user's ratings.
    rated_items = np.unique(index[known])
    u = users_lib.collect(
        np.zeros(int(known.sum()), np.int64), index[known], values[known],
        None, known_users=np.zeros(0, np.int64), known_items=rated_items,
        max_support=self.max_support)
    if len(u) == 0:
      return UserModel(self, user_id, source="adapted",
                       fast=dict(self._meta_fast),
                       user_features=features, rated=np.zeros(0, np.int64),
                       flags=flags | layout.NO_RATINGS, skipped_items=skipped)
    flags |= int(u.flags[0]) & layout.TRUNCATED
    rated = rated_items[u.items].astype(np.int64)
    size = int(u.support_sizes[0])
    batch = self.one_support(features, rated[:size], u.ratings[:size], rated)
    fast, finite, counts = self.adapt_users(batch)
    flags |= 0 if counts[0] else layout.UNCOUNTED
    if not finite[0]:
      raise ValueError(f"adapting on these {size} ratings gives a model"
                       " whose predictions are not finite:"
                       f" {diverges(self.meta_config)}")
    return UserModel(self, user_id, source="adapted",
                     fast={p: v[0] for p, v in fast.items()},
                     user_features=features, rated=rated, flags=flags,
                     support_size=size, skipped_items=skipped)

  # ----------------------------------------------------------------- device

  def _scores(self, user: UserModel, index: np.ndarray) -> np.ndarray:
    """The user's predicted ratings of catalogue positions `index`."""
    index = np.asarray(index, np.int64)
    out = np.empty(len(index), np.float32)
    fast = jax.device_put(user.fast)
    features = jax.device_put(user.user_features)
    for lo in range(0, len(index), MAX_BLOCK):
      part = index[lo:lo + MAX_BLOCK]
      padded = np.zeros(min(_bucket(len(part)), MAX_BLOCK), np.int32)
      padded[:len(part)] = part
      scores = self._predict(self._params, fast, features, self._item_tables,
                             jnp.asarray(padded))
      out[lo:lo + len(part)] = np.asarray(scores)[:len(part)]
    return out


def _scalar(value):
  """A user id as a numpy-comparable scalar (numbers stay numbers; a float
  of a whole number is that integer of an integer catalogue, as
  `catalogue.lookup` reads it)."""
  if isinstance(value, (numbers.Integral, np.integer)):
    return int(value)
  return value

