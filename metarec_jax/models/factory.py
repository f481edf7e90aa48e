"""The model named by `model.name` over the data's features (`build`)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable

import jax.numpy as jnp
import numpy as np

from metarec_jax.data.schema import ITEM_ID, FeatureSpec, select
from metarec_jax.meta import ALGORITHMS, Members
from metarec_jax.models import (anchored, anchored_idemb, anchored_loss,
                                cold_blend, precision)
from metarec_jax.models.idemb import INTERACTIONS, IDEmb
from metarec_jax.models.melu import MeLU, popularity_table, rows_init
from metarec_jax.models.recommender import (LOSSES, RANKING_LOSSES,
                                            RATING_LOSSES, Recommender,
                                            linear_head_loss, plain_loss,
                                            with_loss)


MODELS = ("melu", "idemb")
# `model.table_row_multiple`: tables of at least this many times the
# multiple are padded, so the padding adds at most 1/64 of a table's rows.
PAD_FROM_MULTIPLES = 64


def table_rows(vocab: int, multiple: int) -> int:
  """The rows of an embedding table over `vocab` indices: `vocab`, or for a
  table of at least `PAD_FROM_MULTIPLES * multiple` rows, `vocab` rounded
  up to a multiple of `multiple` (`model.table_row_multiple`). The extra
  rows are never looked up; they let a `mesh.model` axis that divides
  `multiple` split the table evenly, as JAX needs (a catalogue of 1,000,000
  items has 1,000,001 rows, which no even axis divides)."""
  if multiple <= 1 or vocab < PAD_FROM_MULTIPLES * multiple:
    return vocab
  return -(-vocab // multiple) * multiple


def _pad_rows(table: np.ndarray, rows: int) -> np.ndarray:
  """`table` with zero rows appended up to `rows`."""
  return np.pad(table, [(0, rows - len(table))] + [(0, 0)] * (table.ndim - 1))


def _padded_fields(fields: tuple[FeatureSpec, ...],
                   multiple: int) -> tuple[FeatureSpec, ...]:
  """`fields` with each vocabulary the rows of its table (`table_rows`)."""
  return tuple(dataclasses.replace(f, vocab=table_rows(f.vocab, multiple))
               for f in fields)


def for_data(model_config, *, implicit_data: bool):
  """The `model` config as built for the data: `model.anchor` (the
  item-mean + user-bias baseline, a rating model) is off on implicit
  feedback, and `model.popularity_prior` (a logit's prior) is on only for
  MeLU on implicit feedback with a ranking loss."""
  anchor = bool(model_config.anchor) and not implicit_data
  prior = (bool(model_config.popularity_prior) and implicit_data
           and model_config.name == "melu"
           and model_config.loss in RANKING_LOSSES)
  if (anchor, prior) != (bool(model_config.anchor),
                         bool(model_config.popularity_prior)):
    model_config = copy.deepcopy(model_config)
    model_config.anchor, model_config.popularity_prior = anchor, prior
  return model_config


def is_anchored(model_config) -> bool:
  """Whether the model is built on the item-mean + user-bias baseline:
  `model.anchor`, for `melu` and (`model.anchor_version` 2, every config
  written since it exists) `idemb`."""
  if not model_config.anchor:
    return False
  return (model_config.name == "melu"
          or (model_config.name == "idemb"
              and int(model_config.anchor_version) >= 2))


def needs_item_id(model_config) -> bool:
  """Whether the model reads the virtual `item_id` feature."""
  return (model_config.name == "idemb"
          or bool(model_config.anchor)
          or bool(model_config.item_id)
          or bool(model_config.popularity_prior)
          or ITEM_ID in tuple(model_config.features))


def feature_names(model_config, specs: Iterable[FeatureSpec], *,
                  strict: bool = True) -> tuple[str, ...]:
  """The stored feature fields the model reads: `model.features` (empty =
  all of them) without `model.exclude_features`.

  Raises:
    ValueError: (`strict`) an excluded name is not a feature of the data.
  """
  names = tuple(model_config.features)
  exclude = tuple(model_config.exclude_features)
  if not exclude:
    return names
  known = [s.name for s in specs]
  unknown = [n for n in exclude if n not in known]
  if unknown and strict:
    raise ValueError(f"model.exclude_features names unknown feature(s)"
                     f" {', '.join(unknown)}; the data has: {', '.join(known)}")
  return tuple(n for n in (names or known) if n not in exclude)


def example_features(fields: Iterable[FeatureSpec]) -> dict[str, Any]:
  """A one-row batch of feature indices (all padding) for `init`.

  numpy, not jax arrays: building a model compiles nothing (a finished
  run's restart compiles no program at all).
  """
  return {f.name: np.zeros((1, f.max_len) if f.kind == "list" else (1,),
                           np.int32) for f in fields}


def build(model_config, features: Iterable[FeatureSpec], *,
          rating_mean: float = 0.0,
          item_means: tuple[np.ndarray, np.ndarray] | None = None,
          inner_lr: float = 0.1,
          item_counts: np.ndarray | None = None,
          id_rows: dict[str, np.ndarray] | None = None,
          algorithm: str = "maml") -> Recommender:
  """The model named by `model_config.name` over the data's features.

  Its losses compute in `model_config.compute_dtype` (`precision`); the
  parameters stay float32.

  Args:
    model_config: the `model` section of a complete config
      (`config_io.complete`).
    features: the data's feature schema (with `item_id` for `idemb`, see
      `needs_item_id`).
    rating_mean: the output bias starts here, so training starts from the
      global mean instead of spending its first steps finding it.
    item_means: `model.anchor`: `(shrunk mean, w)` of each item's training
      ratings: `eval.baselines.BaselineStats.item_mean` and the weight
      `n / (n + pseudo-ratings)` of its own ratings in it; the fixed part
      of the item biases (default: none, as if no item had ratings).
    inner_lr: `model.anchor`: the inner loop's rate, which sets the scale
      of the adapted user bias (`anchored_loss.user_bias_scale`).
    item_counts: each item's number of training ratings (positives on
      implicit feedback): the median map's kind of item
      (`model.calibration=median`) and the popularity prior
      (`model.popularity_prior`); default: none known (one map row for
      every item; a flat prior, as an export's parameters then replace).
    id_rows: `model.id_init=svd`: the starting rows `[vocab, embed_dim]`
      of the anchored MeLU's id tables, by field name (`item_key`: the
      training ratings' item factors, `data.factors`); default: none (the
      tables start at random).
    algorithm: `meta.algorithm`: an encoding one (`meta.ALGORITHMS`) has
      no cold blend (`blends_cold`).
  """
  features = tuple(features)
  rec = _build(model_config, features, rating_mean, item_means, inner_lr,
               item_counts, id_rows or {})
  rating = {model_config.loss, model_config.query_loss
            or model_config.loss} <= set(RATING_LOSSES)
  median = model_config.calibration == "median" and rating
  cold = blends_cold(model_config, algorithm)
  existing = None
  if ((median or cold) and item_counts is not None
      and any(f.name == ITEM_ID for f in features)):
    existing = np.concatenate([[False], np.asarray(item_counts) > 0])
    existing = _pad_rows(existing, table_rows(
        existing.size, int(model_config.table_row_multiple)))
  if median:
    rec = dataclasses.replace(rec, median_map=True, existing_items=existing)
  if cold:
    least = model_config.warm_min_support == "validated"
    least_new = model_config.new_item_min_support == "validated"
    rec = dataclasses.replace(
        rec, loss_fn=cold_blend.with_warm_term(rec.loss_fn),
        query_loss_fn=rec.query_loss_fn or rec.loss_fn,
        always_adapt=rec.always_adapt + (cold_blend.WARM_PATTERN,),
        meta_fixed=rec.meta_fixed + (cold_blend.WARM_PATTERN,),
        existing_items=existing,
        support_weights=cold_blend.support_weights,
        blend=cold_blend.Blend(float(rating_mean), least, least_new))
  loss_fn, query_loss_fn = precision.compute_in(
      (rec.loss_fn, rec.query_loss_fn),
      model_config.compute_dtype)
  return dataclasses.replace(rec, loss_fn=loss_fn,
                             query_loss_fn=query_loss_fn)


def blends_cold(model_config, algorithm: str = "maml") -> bool:
  """Whether the model serves a user without ratings its validated cold
  blend (`models.cold_blend`): `model.cold_blend=validated` on a rating
  model without an anchor (the anchored ones have their cold shares), of
  one member, adapted by gradient steps (an encoding algorithm's
  meta-parameters are no model of a user at all)."""
  spec = ALGORITHMS.get(algorithm)
  return (model_config.cold_blend == "validated"
          and not is_anchored(model_config)
          and int(model_config.members) == 1
          and {model_config.loss, model_config.query_loss
               or model_config.loss} <= set(RATING_LOSSES)
          and spec is not None and not spec.encoder)


def _build(model_config, features: tuple[FeatureSpec, ...], rating_mean,
           item_means, inner_lr, item_counts, id_rows) -> Recommender:
  """`build` in float32."""
  name = model_config.name
  features = tuple(features)
  # `features` may already be narrowed (FeatureTables): exclusions of
  # fields that are no longer there are fine here.
  names = feature_names(model_config,
                        [f for f in features if f.name != ITEM_ID],
                        strict=False)
  if names and needs_item_id(model_config) and ITEM_ID not in names:
    names += (ITEM_ID,)
  # The data's vocabularies (what the fixed tables below are filled from)
  # and the rows of the model's tables.
  data_fields = select(features, names)
  fields = _padded_fields(data_fields, int(model_config.table_row_multiple))
  kind = model_config.loss
  query_kind = model_config.query_loss or kind
  delta = float(model_config.huber_delta)
  rank_weight = float(model_config.query_rank_weight)
  support_rank = float(model_config.support_rank_weight)
  for key, weight, loss_kind in (("query_rank_weight", rank_weight,
                                  query_kind),
                                 ("support_rank_weight", support_rank, kind)):
    if weight and loss_kind in RANKING_LOSSES:
      raise ValueError(f"model.{key} adds a ranking term to a rating loss;"
                       f" {loss_kind!r} already ranks")
  for key, value in (("loss", kind), ("query_loss", query_kind)):
    if value not in LOSSES:
      raise ValueError(f"model.{key} must be one of {', '.join(LOSSES)},"
                       f" got {value!r}")
  ranking = [f"model.{key}={value}" for key, value in (
      ("loss", kind), ("query_loss", query_kind)) if value in RANKING_LOSSES]
  if ranking and is_anchored(model_config):
    # Found here, not as a ValueError from its first support loss.
    raise ValueError(f"{ranking[0]} is a loss of implicit feedback, and the"
                     " baseline-anchored models (model.anchor) predict"
                     " ratings: mse or huber (`for_data` turns the anchor"
                     " off on implicit data)")
  if is_anchored(model_config):
    return _anchored(model_config, fields, rating_mean, item_means, inner_lr,
                     kind, query_kind, delta, rank_weight, support_rank,
                     id_rows)
  if name == "melu":
    popularity_init, deep = None, fields
    # `for_data` turns the prior off but for implicit feedback; a ranking
    # loss means that too for a caller who built the config by hand.
    if model_config.popularity_prior and kind in RANKING_LOSSES:
      ids = [f for f in fields if f.name == ITEM_ID]
      if not ids:
        raise ValueError("model.popularity_prior reads the item_id feature:"
                         " build the feature tables with item_id="
                         "models.needs_item_id(config)")
      # The prior reads the item ID; the network embeds it only if asked.
      items = [f for f in data_fields if f.name == ITEM_ID][0].vocab
      table = _pad_rows(popularity_table(item_counts, items), ids[0].vocab)
      popularity_init = lambda _: jnp.asarray(table)  # noqa: E731
      embeds_id = (bool(model_config.item_id)
                   or ITEM_ID in tuple(model_config.features))
      deep = tuple(f for f in fields if f.name != ITEM_ID or embeds_id)
    # One MeLU; an ensemble (`model.members`) stacks copies of it and
    # scores each copy with this one's loss (`meta.Members`).
    module = MeLU(fields=deep, embed_dim=int(model_config.embed_dim),
                  hidden=tuple(int(h) for h in model_config.hidden),
                  output_bias=float(rating_mean),
                  embed_std=float(model_config.embed_std),
                  popularity_init=popularity_init,
                  item_fields=tuple(f for f in fields if f.side == "item"
                                    and f.name != ITEM_ID)
                  if popularity_init is not None else ())
    loss = linear_head_loss(module, kernel="decision/fc1/kernel",
                            bias="decision/fc1/bias",
                            featurize_reads=("^embed/",), loss=kind,
                            delta=delta, rank_weight=support_rank)
    query_loss = (None if (query_kind, rank_weight) == (kind, support_rank)
                  else with_loss(loss, module, query_kind, delta, rank_weight))
    if int(model_config.members) > 1:
      stacked = ("^embed/", "^decision/")
      module = module.clone(members=int(model_config.members))
      loss = Members(loss, stacked)
      query_loss = query_loss and Members(query_loss, stacked)
    return Recommender(name=name, module=module, loss_fn=loss,
                       adapt=("^decision/",),
                       example_features=example_features(fields),
                       query_loss_fn=query_loss)
  if name == "idemb":
    ids = [f for f in fields if f.name == ITEM_ID]
    if not ids:
      raise ValueError("model.name=idemb needs the item_id feature (add it"
                       " to model.features or leave model.features empty)")
    interaction = _interaction(model_config)
    item_fields = ()
    if model_config.item_features:
      item_fields = tuple(f for f in fields
                          if f.side == "item" and f.name != ITEM_ID)
    module = IDEmb(num_items=ids[0].vocab, item_fields=item_fields,
                   embed_dim=int(model_config.embed_dim),
                   interaction=interaction,
                   hidden=tuple(int(h) for h in model_config.hidden),
                   output_bias=float(rating_mean))
    return Recommender(name=name, module=module,
                       loss_fn=plain_loss(module, kind, delta, support_rank),
                       adapt=("^user/",),
                       example_features=example_features(fields),
                       query_loss_fn=(
                           None if (query_kind, rank_weight)
                           == (kind, support_rank)
                           else plain_loss(module, query_kind, delta,
                                           rank_weight)))
  raise ValueError(f"model.name must be one of {', '.join(MODELS)}, got"
                   f" {name!r}")


def _anchored(model_config, fields, rating_mean, item_means, inner_lr, kind,
              query_kind, delta, rank_weight, support_rank,
              id_rows) -> Recommender:
  """`model.anchor`: MeLU or IDEmb on top of global + item + user biases."""
  num_items = [f for f in fields if f.name == ITEM_ID][0].vocab
  # Per item: w * mean residual (the shrunk mean minus the global mean is
  # exactly that) and w; row 0 (padding) stays 0 and 0.
  offsets = np.zeros((num_items, 2), np.float32)
  if item_means is not None:
    means, weights = (np.asarray(a, np.float64) for a in item_means)
    # A non-finite mean (a corrupt rating) must not poison every prediction
    # of its item: such an item is treated as one without ratings.
    known = np.isfinite(means) & np.isfinite(weights)
    # (rows past the data's items: a padded table's, never looked up)
    offsets[1:1 + means.size, 0] = np.where(known, means - rating_mean, 0.0)
    offsets[1:1 + means.size, 1] = np.where(known, weights, 0.0)

  def item_bias_init(key, shape, dtype=jnp.float32):
    del key
    return jnp.asarray(offsets, dtype).reshape(shape)

  item_fields = tuple(f for f in fields
                      if f.side == "item" and f.name != ITEM_ID)
  anchor = dict(num_items=num_items, item_fields=item_fields,
                item_bias_init=item_bias_init,
                global_mean=float(rating_mean),
                user_scale=anchored_loss.user_bias_scale(inner_lr),
                prior=float(model_config.user_bias_prior),
                new_item_prior=model_config.new_item_prior == "validated",
                new_item_min_support=(
                    model_config.new_item_min_support == "validated"),
                warm_min_support=model_config.warm_min_support == "validated",
                cold_share=model_config.cold_share == "validated")
  if model_config.name == "idemb":
    module = anchored_idemb.AnchoredIDEmb(
        **anchor, embed_dim=int(model_config.embed_dim),
        vector_fields=item_fields if model_config.item_features else (),
        interaction=_interaction(model_config),
        hidden=tuple(int(h) for h in model_config.hidden))
    return anchored_idemb.recommender(
        module, example_features(fields), kind=kind, delta=delta,
        query_kind=query_kind, rank_weight=rank_weight,
        support_rank_weight=support_rank)
  deep = tuple(f for f in fields
               if f.name != ITEM_ID or model_config.item_id)
  # No feature at all: the interaction can only come from the item IDs.
  deep = deep or tuple(f for f in fields if f.name == ITEM_ID)
  module = anchored.AnchoredMeLU(
      **anchor, fields=deep, embed_dim=int(model_config.embed_dim),
      embed_starts=tuple((f.name, rows_init(id_rows[f.name]))
                         for f in deep if f.name in id_rows),
      hidden=tuple(int(h) for h in model_config.hidden),
      embed_std=float(model_config.embed_std))
  return anchored.recommender(
      module, example_features(fields), kind=kind, delta=delta,
      query_kind=query_kind, rank_weight=rank_weight,
      support_rank_weight=support_rank)


def _interaction(model_config) -> str:
  """`model.interaction`, checked."""
  if model_config.interaction not in INTERACTIONS:
    raise ValueError(f"model.interaction must be one of"
                     f" {', '.join(INTERACTIONS)},"
                     f" got {model_config.interaction!r}")
  return model_config.interaction
