"""A config resolved into the parts every command needs.

`train`, `eval`, `export` and `bench` all start here, so the store, the
protocol split, the model and the algorithm are built the same way
everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
from jax.experimental import multihost_utils
import numpy as np

from metarec_jax import backend, meta, models, runtime
from metarec_jax.data import (factors, implicit, schema, splits,
                              store as store_lib)
from metarec_jax.data.convert import prepare, store_checks
from metarec_jax.data.sampler import SamplerSpec
from metarec_jax.data.store import TaskStore
from metarec_jax.data.tasks import FeatureTables
from metarec_jax.errors import InputError
from metarec_jax.data.baselines import ITEM_PSEUDO, BaselineStats, training_mean


@dataclasses.dataclass
class Experiment:
  """A config and its data built into the objects every command runs:
  the task store, its split, feature tables, model and `MetaConfig`."""

  config: object
  store: TaskStore
  split: splits.Split
  tables: FeatureTables
  model: models.Recommender
  meta_config: meta.MetaConfig

  @property
  def model_config(self):
    """The `model` section as built for the data (`models.for_data`)."""
    return models.for_data(self.config.model,
                           implicit_data=implicit.is_implicit(self.store))

  def sampler_spec(self) -> SamplerSpec:
    """How training draws its tasks (`train.*`, `data.*` sizes)."""
    c = self.config
    return SamplerSpec(seed=int(c.train.seed),
                       tasks_per_step=int(c.train.tasks_per_step),
                       query_size=int(c.data.train_query_size
                                      or c.data.query_size),
                       max_support=int(c.data.max_support),
                       min_support=int(c.data.min_support),
                       support_sampling=c.data.support_sampling,
                       item_id_dropout=float(c.data.item_id_dropout),
                       buckets=tuple(int(b) for b in c.data.buckets),
                       negatives=(int(self.implicit.negatives)
                                  if self.implicit.enabled else 0))

  @property
  def rating_mean(self) -> float:
    """The rating the model was built to start from (`model_rating_mean`):
    what an export records, so that serving rebuilds the same model."""
    return model_rating_mean(self.config, self.store, self.split)

  @property
  def implicit(self) -> implicit.ImplicitSpec:
    """The `data.implicit` section (enabled only for an implicit store)."""
    return implicit.spec_of(self.config.data)

  def negative_sampler(self) -> implicit.NegativeSampler | None:
    """The training tasks' negative sampler (None for rating data)."""
    spec = self.implicit
    if not spec.enabled:
      return None
    sampler = implicit.training_sampler(self.store, self.split,
                                        spec.sampling)
    # Past the pool every draw repeats one, and a batch still grows by a row
    # per draw: data.implicit.negatives=100000 on 120 items ended the first
    # step in an out-of-memory traceback (a 10 TB allocation).
    if spec.negatives > len(sampler.pool):
      raise InputError(
          f"config key data.implicit.negatives={spec.negatives}: more"
          " negatives per positive than the"
          f" {len(sampler.pool):,} existing items they are drawn from:"
          f" set it to at most {len(sampler.pool):,}")
    return sampler


def model_rating_mean(config, store: TaskStore, split: splits.Split
                      ) -> float:
  """The rating the model starts from: its output bias's start, and the
  anchored models' global level (what an item without training ratings
  starts at).

  `model.global_mean`: `training`, the mean of the training users'
  ratings, the baseline's own (`data.baselines.training_mean`); `all`, the
  store's mean of every rating, the held-out users' query ratings included
  (runs written before the key; on MovieLens-1M 3.5817 against the training
  users' 3.6017). Implicit feedback: 0 (scores are logits).
  """
  if implicit.is_implicit(store):
    return 0.0
  if config.model.global_mean == "all":
    return float(store.manifest["rating_mean"])
  return training_mean(store, split)


INNER_LR_SCALES = ("rating_width", "none")
STAR_SCALE_WIDTH = 4.0  # 1 to 5 stars: where `meta.inner_lr` is set


def inner_lr(config, store: TaskStore) -> float:
  """The inner loop's rate on `store`'s ratings (`meta.inner_lr_scale`).

  The squared error's gradient grows with the rating scale, and an inner
  step's move with it: a rate set for 1 to 5 stars diverged on a 0 to 100
  scale. `rating_width` keeps the move the same in stars on wider scales,
  scaling the rate by (4 / width)^2 (x 1 on a 1 to 5 scale, exactly), and
  never raises it: on a 0/1 scale x 16 diverged where the rate as given
  trains."""
  lr = float(config.meta.inner_lr)
  lo, hi = store.rating_range
  if (config.meta.inner_lr_scale == "none" or implicit.is_implicit(store)
      or hi - lo <= STAR_SCALE_WIDTH):
    return lr
  return lr * (STAR_SCALE_WIDTH / (hi - lo)) ** 2


def protocol_spec(config) -> splits.ProtocolSpec:
  """The evaluation split's settings (`eval.*`, `data.query_size`)."""
  e = config.eval
  return splits.ProtocolSpec(seed=int(e.seed),
                             new_user_fraction=float(e.new_user_fraction),
                             val_fraction=float(e.val_fraction),
                             min_ratings=int(e.min_ratings),
                             max_ratings=int(e.max_ratings),
                             query_size=int(config.data.query_size),
                             max_tasks=int(e.max_tasks))


# The `meta.*` keys that are no `MetaConfig` field: read here, around it.
META_KEYS_OUTSIDE = frozenset({"inner_lr_scale"})  # (`inner_lr`)


def meta_config(config, model: models.Recommender, *,
                inner_rate: float) -> meta.MetaConfig:
  """The `meta` section as a `MetaConfig` running the inner loop at
  `inner_rate` (`inner_lr`); empty `adapt` = model default.

  Every `meta.*` key that names a `MetaConfig` field is passed on, so a new
  one reaches the core by itself (a key that names none belongs in
  `META_KEYS_OUTSIDE`; a test checks both)."""
  m = config.meta
  fields = {f.name for f in dataclasses.fields(meta.MetaConfig)}
  asked = {key: m[key] for key in m.keys() if key in fields}
  adapt = tuple(m.adapt) or model.adapt
  adapt += tuple(p for p in model.always_adapt if p not in adapt)
  try:
    return meta.MetaConfig(**{
        **asked, "inner_lr": float(inner_rate),
        "adapt": adapt,
        # 0: automatic, per backend (`backend.inner_unroll`).
        "unroll": backend.inner_unroll(int(m.unroll), int(m.inner_steps)),
        "msl_weights": tuple(float(w) for w in m.msl_weights)})
  except ValueError as e:
    raise InputError(str(e)) from None


def _same_data_as_lead(store) -> None:
  """Raises InputError on a process of a joined run whose task store holds
  other data than process 0's: each process draws its share of every
  batch from its own store, so the run would train on a mix of both,
  recorded as process 0's (`data.root` and `data.store` are each host's
  own paths, compared only as set or not)."""
  digest, sizes = store_lib.content_digest(store), _sizes(store)
  lead = json.loads(runtime.from_lead("task store data",
                                      json.dumps([digest, sizes])))
  if digest != lead[0]:
    # Of the same sizes, the line showed two equal counts and no difference.
    theirs = (f"process 0's: {lead[1]}" if lead[1] != sizes else
              f"the sizes of process 0's, other contents: SHA-256"
              f" {digest[:12]}... against {lead[0][:12]}...")
    raise InputError(
        f"process {jax.process_index()} reads other data than process 0"
        f" (its task store: {sizes}; {theirs}): every"
        " process must read the same data (data.root or data.store may be"
        " each host's own copy of it)", path=store.path)


def _sizes(store) -> str:
  return (f"{len(store.user_ids):,} users, {len(store.item_ids):,} items,"
          f" {len(store.ratings):,} ratings")


def _id_rows(model_config, store, split, tables: FeatureTables,
             implicit_data: bool, log: Callable[[str], None] | None
             ) -> dict[str, np.ndarray]:
  """`model.id_init=svd`: the starting rows of the anchored MeLU's
  `item_key` table, the training ratings' item factors
  (`factors.item_factors`) at each item's row of the table; `{}` (random
  rows) where the model embeds no item ids, reads no ratings (implicit
  feedback), or the ratings hold nothing to factor."""
  key = schema.ID_KEYS["item"]
  specs = {s.name: s for s in tables.specs}
  if (model_config.id_init != "svd" or implicit_data
      or model_config.name != "melu" or not models.is_anchored(model_config)
      or key not in specs):
    return {}
  dim = int(model_config.embed_dim)
  per_item = factors.item_factors(store, split, dim,
                                  scale=float(model_config.embed_std))
  if jax.process_count() > 1:
    # The SVD's last bits, even whether it converges, may differ between
    # hosts' libraries: every process starts from process 0's rows (or
    # random rows where process 0 has none), as from its random draws.
    # Process 0's choice goes through the coordination service, and a
    # barrier precedes the rows' broadcast: a gloo collective gives up
    # after 30 s, less than a slower host's SVD may take (`runtime`).
    found = per_item is not None
    if runtime.from_lead("item factors found", str(int(found))) == "0":
      per_item = None
    else:
      runtime.sync_processes("item factors")
      per_item = np.asarray(multihost_utils.broadcast_one_to_all(
          per_item if found
          else np.zeros((store.num_items, dim), np.float32)))
  if per_item is None:
    if log is not None:
      log("model.id_init=svd: the training ratings hold nothing to factor"
          " (or the SVD did not converge); a fresh run's item ids' table"
          " starts at random, as with model.id_init=normal")
    return {}
  rows = np.zeros((specs[key].vocab, dim), np.float32)
  index = np.asarray(tables.item[key]).reshape(-1)
  rows[index] = per_item
  rows[0] = 0.0  # the row of every item without training ratings
  return {key: rows}


def build(config, workdir: str | os.PathLike, *,
          log: Callable[[str], None] | None = None,
          rebuild_stale: bool = False) -> Experiment:
  """Opens (building on first use) the store and resolves the config.
  `rebuild_stale`: a stale own store is built again (`train` before its
  first checkpoint: `prepare.ensure_store`)."""
  if jax.process_count() > 1:
    # One process builds a missing store (minutes, for a large dataset);
    # the others wait at a barrier that allows for it, then open it.
    if runtime.is_lead():
      prepare.ensure_store(config.data, workdir, log=log,
                           rebuild_stale=rebuild_stale)
    runtime.sync_processes("task store ready")
    rebuild_stale = False  # done by the lead, where needed
  store = prepare.ensure_store(config.data, workdir, log=log,
                               rebuild_stale=rebuild_stale)
  store_checks.check_run_store(config.data, workdir, store)
  if jax.process_count() > 1:
    _same_data_as_lead(store)
  split = splits.split(store, protocol_spec(config))
  implicit_data = implicit.is_implicit(store)
  model_config = models.for_data(config.model, implicit_data=implicit_data)
  try:
    tables = FeatureTables.from_store(
        store, models.feature_names(model_config, store.features),
        item_id=models.needs_item_id(model_config))
  except ValueError as e:
    raise InputError(str(e)) from None
  ranking = [k for k in ("loss", "query_loss")
             if config.model[k] in models.RANKING_LOSSES]
  if ranking and not implicit_data:
    raise InputError(f"model.{ranking[0]}={config.model[ranking[0]]} is"
                     " a loss for implicit feedback, but the data has ratings"
                     " (set data.implicit.enabled=true)")
  item_means = None
  counts = np.bincount(np.asarray(store.items)[split.train_positions],
                       minlength=store.num_items)
  # Trained rows: of the users and items with training ratings, and on
  # implicit data drawing negatives uniformly, of every existing item (each
  # a negative; by popularity, one without a training positive never is).
  uniform = implicit_data and config.data.implicit.sampling == "uniform"
  trained = (counts > 0) | (~np.asarray(store.item_new) if uniform
                            else False)
  tables = tables.unseen_ids_missing(split.train_counts() > 0, trained)
  if models.is_anchored(model_config):
    item_means = (BaselineStats.from_split(store, split).item_mean,
                  counts / (counts + ITEM_PSEUDO))
  id_rows = _id_rows(model_config, store, split, tables, implicit_data,
                     log)
  rate = inner_lr(config, store)
  if rate != float(config.meta.inner_lr) and log is not None:
    log(f"meta.inner_lr {config.meta.inner_lr:g} runs at {rate:.4g} on"
        f" ratings {store.rating_range[0]:g} to {store.rating_range[1]:g}"
        " (meta.inner_lr_scale=rating_width)")
  try:
    model = models.build(model_config, tables.specs,
                         rating_mean=model_rating_mean(config, store, split),
                         item_means=item_means, inner_lr=rate,
                         item_counts=counts, id_rows=id_rows,
                         algorithm=config.meta.algorithm)
  except ValueError as e:
    raise InputError(str(e)) from None
  idle = [k for k, off in (("anchor", not model_config.anchor),
                           ("calibration", not model.median_map))
          if implicit_data and off and config.model[k] not in (False, "none")]
  if idle and log is not None:  # config.json holds them as given
    log(f"implicit feedback: {' and '.join(f'model.{k}' for k in idle)}"
        " (for ratings) do not apply")
  mc = meta_config(config, model, inner_rate=rate)
  if mc.spec.encoder:
    # Found here, not as a traceback from inside the first jit trace.
    try:
      meta.encoder.rows_of(model.loss_fn)
    except ValueError:  # (an anchored model is refused by the config's
      # rules: its baseline part's fit is closed-form)
      raise InputError(
          f"meta.algorithm={mc.algorithm} encodes a model's support rows:"
          f" model.name={model_config.name}'s loss has no `rows` (its"
          " module no `featurize`)") from None
  try:  # a typo in meta.adapt must fail here, not deep inside a jit trace
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0)))
    meta.adapt_mask(shapes, mc.adapt)
    if isinstance(model.loss_fn, meta.Members):  # a shared leaf adapted
      model.loss_fn.check(mc, shapes)
  except ValueError as e:
    raise InputError(str(e)) from None
  return Experiment(config=config, store=store, split=split, tables=tables,
                    model=model, meta_config=mc)
