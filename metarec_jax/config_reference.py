"""The allowed values of every config key, and the check of a config.

`ALLOWED` (and `RELATIONS`, between keys) is the one place a key's type and
range are written (its meaning is in `config_meanings`, its default in
`config_defaults`); `validate` checks a config against them. The README's
config reference shows them (`config_table`).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import ml_collections

from metarec_jax import config_defaults, config_io
from metarec_jax import config_rules as R
from metarec_jax.errors import InputError, excerpt

_MODELS, _META = "metarec_jax.models.factory", "metarec_jax.meta.config"


def _algorithm(name: str):
  """`meta.algorithm`'s row of `meta.config.ALGORITHMS` (read lazily: the
  cheap checks import no JAX until a rule needs it)."""
  return importlib.import_module(_META).ALGORITHMS[name]


_COUNT, _SHARE = R.Int(0), R.Float(0.0, 1.0)
_RATE = R.Float(0.0, lo_open=True)  # a positive, finite rate or size
_NAMES = R.Tuple(R.Text(nonempty=True))


def _id_keys() -> set[str]:
  """The names of the ids as features (`data.schema.ID_KEYS`)."""
  return set(importlib.import_module("metarec_jax.data.schema")
             .ID_KEYS.values())

# The two kinds of loss, read where the losses are written.
_RATING_LOSSES = R.OneOf("metarec_jax.models.recommender", "RATING_LOSSES")
_RANKING_LOSSES = R.OneOf("metarec_jax.models.recommender", "RANKING_LOSSES")

# What each key may be: one rule per key of `config_meanings.MEANINGS` (the
# test checks both ways). `validate` applies them before a command builds or
# creates anything; the README's table shows them.
ALLOWED: dict[str, Any] = {
    "model.name": R.OneOf(_MODELS, "MODELS"),
    "model.interaction": R.OneOf("metarec_jax.models.idemb", "INTERACTIONS"),
    "model.item_features": R.Bool(),
    "model.table_row_multiple": R.Int(1),
    "model.features": _NAMES,
    "model.exclude_features": _NAMES,
    "model.embed_dim": R.Int(1),
    "model.members": R.Int(1),
    "model.loss": R.OneOf("metarec_jax.models.recommender", "LOSSES"),
    "model.query_loss": R.OneOf("metarec_jax.models.recommender", "LOSSES",
                                 empty=True),
    "model.huber_delta": _RATE,
    "model.query_rank_weight": R.Float(0.0),
    "model.support_rank_weight": R.Float(0.0),
    "model.embed_std": R.Float(0.0),
    "model.item_id": R.Bool(),
    "model.anchor": R.Bool(),
    "model.anchor_version": R.Int(1, 2),
    "model.global_mean": R.OneOf("metarec_jax.data.baselines",
                                 "GLOBAL_MEANS"),
    "model.user_bias_prior": R.Float(0.0),
    "model.new_item_prior": R.OneOf("metarec_jax.models.anchored",
                                    "NEW_ITEM_PRIORS"),
    "model.new_item_min_support": R.OneOf("metarec_jax.models.anchored",
                                          "NEW_ITEM_MIN_SUPPORTS"),
    "model.warm_min_support": R.OneOf("metarec_jax.models.anchored",
                                      "WARM_MIN_SUPPORTS"),
    "model.cold_share": R.OneOf("metarec_jax.models.anchored",
                                "COLD_SHARES"),
    "model.cold_blend": R.OneOf("metarec_jax.models.cold_blend", "BLENDS"),
    "model.id_init": R.OneOf("metarec_jax.data.factors", "ID_INITS"),
    "model.calibration": R.OneOf("metarec_jax.models.calibration",
                                 "CALIBRATIONS"),
    "model.popularity_prior": R.Bool(),
    "model.hidden": R.Tuple(R.Int(1), min_len=1),
    "model.compute_dtype": R.OneOf("metarec_jax.models.precision",
                                   "COMPUTE_DTYPES"),
    "data.name": R.OneOf("metarec_jax.data.convert.prepare", "DATASETS"),
    "data.root": R.Text(),
    "data.store": R.Text(),
    "data.item_id_dropout": _SHARE,
    "data.max_support": R.Int(1),
    "data.min_support": R.Int(1),
    "data.query_size": R.Int(1),
    "data.train_query_size": R.Int(0),
    "data.support_sampling": R.OneOf("metarec_jax.data.sampler",
                                     "SUPPORT_SAMPLING"),
    "data.buckets": R.Tuple(R.Int(1), min_len=1),
    "data.list_pad.genre": R.Int(1),
    "data.list_pad.director": R.Int(1),
    "data.list_pad.actor": R.Int(1),
    "data.implicit.enabled": R.Bool(),
    "data.implicit.threshold": R.Float(),
    "data.implicit.negatives": _COUNT,
    "data.implicit.sampling": R.OneOf("metarec_jax.data.implicit",
                                      "SAMPLING"),
    "data.implicit.eval_negatives": R.Int(1),
    "data.synthetic.num_users": R.Int(1),
    "data.synthetic.num_items": R.Int(1),
    "data.synthetic.min_ratings": R.Int(1),
    "data.synthetic.max_ratings": R.Int(1),
    "data.synthetic.seed": _COUNT,
    "data.synthetic.personal_scale": R.Float(0.0),
    "data.synthetic.noise": R.Float(0.0),
    "data.synthetic.new_item_fraction": _SHARE,
    "data.generic.ratings": R.Text(nonempty=True),
    "data.generic.delimiter": R.Text(nonempty=True, separator=True),
    "data.generic.header": R.Bool(),
    "data.generic.encoding": R.Text(nonempty=True),
    "data.generic.user_col": R.Text(nonempty=True, column=True),
    "data.generic.item_col": R.Text(nonempty=True, column=True),
    # Empty: a file without ratings (implicit feedback only).
    "data.generic.rating_col": R.Text(column=True),
    "data.generic.timestamp_col": R.Text(column=True),
    "data.generic.rating_min": R.Float(),
    "data.generic.rating_max": R.Float(),
    "data.generic.user_features": R.Text(),
    "data.generic.item_features": R.Text(),
    "data.generic.feature_delimiter": R.Text(),
    "data.generic.categorical": _NAMES,
    "data.generic.lists": _NAMES,
    "data.generic.numeric": _NAMES,
    "data.generic.numeric_bins": R.Int(2),
    "data.generic.list_sep": R.Text(nonempty=True, separator=True),
    "data.generic.missing": R.Tuple(R.Text()),
    "data.generic.new_item_col": R.Text(),
    "data.generic.new_item_year": _COUNT,
    "data.generic.id_features": R.Bool(),
    "data.generic.quoting": R.OneOf("metarec_jax.data.convert.ratings_io",
                                    "QUOTINGS"),
    "meta.algorithm": R.OneOf(_META, "ALGORITHMS"),
    "meta.inner_steps": _COUNT,
    "meta.inner_lr": _RATE,
    "meta.inner_lr_scale": R.OneOf("metarec_jax.experiment",
                                   "INNER_LR_SCALES"),
    "meta.second_order": R.Bool(),
    "meta.adapt": R.Tuple(R.Pattern()),
    "meta.inner_optimizer": R.OneOf(_META, "INNER_OPTIMIZERS"),
    "meta.remat": R.Bool(),
    "meta.dual_form": R.Bool(),
    "meta.unroll": _COUNT,
    "meta.msl_weights": R.Tuple(R.Float(0.0)),
    "meta.encoder_hidden": R.Int(1),
    "distill.teacher": R.Text(),
    "distill.weight": _SHARE,
    "train.seed": _COUNT,
    "train.num_steps": R.Int(1),
    "train.schedule_steps": _COUNT,
    "train.tasks_per_step": R.Int(1),
    "train.chunk_tasks": _COUNT,
    "train.lr": _RATE,
    "train.warmup_steps": _COUNT,
    # Above 1 the "decay" would climb past train.lr, the peak rate.
    "train.end_lr_factor": _SHARE,
    "train.grad_clip": _RATE,
    "train.unadapted_weight": R.Float(0.0),
    "train.eval_every_steps": R.Int(-1),
    "train.early_stop_patience": _COUNT,
    "train.select_on": R.OneOf("metarec_jax.workdir.criterion", "SELECT_ON"),
    "train.max_nonfinite": R.Int(1),
    "train.preempt_exit_code": R.Int(0, 255),
    # Each batch ahead is held in memory, and each worker keeps one in
    # flight: prefetch=1000000000 filled memory (and queued a billion
    # steps before the first). Far above what keeps a device fed.
    "train.prefetch": R.Int(1, 64),
    "train.input_workers": R.Int(0, 256),
    "train.cpu_devices": R.Int(0, config_defaults.MAX_CPU_DEVICES),
    "mesh.model": R.Int(1),
    "mesh.shard_min_rows": R.Int(1),
    "eval.seed": _COUNT,
    "eval.new_user_fraction": R.Float(0.0, 1.0, hi_open=True),
    "eval.val_fraction": R.Float(0.0, 1.0, hi_open=True),
    "eval.min_ratings": R.Int(2),
    "eval.max_ratings": R.Int(2),
    "eval.max_tasks": _COUNT,
    "eval.batch_tasks": R.Int(1),
    "eval.catalog_block": R.Int(1),
    "checkpoint.every_steps": _COUNT,
    "checkpoint.keep": R.Int(1),
    "log.every_steps": R.Int(1),
    "log.histogram_every_steps": _COUNT,
}

# Facts between keys, checked after every key's own rule.
RELATIONS: tuple[R.Relation, ...] = (
    R.Relation(("data.min_support", "data.max_support"), lambda a, b: a <= b,
               "data.min_support must not exceed data.max_support"),
    R.Relation(("data.synthetic.min_ratings", "data.synthetic.max_ratings"),
               lambda a, b: a <= b, "data.synthetic.min_ratings must not"
               " exceed data.synthetic.max_ratings"),
    R.Relation(("data.synthetic.min_ratings", "data.synthetic.num_items"),
               lambda a, n: a <= n, "data.synthetic.min_ratings must not"
               " exceed data.synthetic.num_items (a user rates an item"
               " once)"),
    R.Relation(("data.generic.categorical", "data.generic.lists",
                "data.generic.numeric"),
               lambda *columns: not _id_keys() & set(sum(columns, ())),
               "data.generic: no feature column may be named user_key or"
               " item_key, the names of the ids as features (with"
               " data.generic.id_features, or a ratings file alone, which"
               " eval and serving read apart for users and items without"
               " training ratings): rename the column"),
    R.Relation(("data.generic.rating_min", "data.generic.rating_max"),
               lambda a, b: a < b, "data.generic.rating_min must be below"
               " data.generic.rating_max"),
    R.Relation(("eval.min_ratings", "eval.max_ratings"), lambda a, b: a <= b,
               "eval.min_ratings must not exceed eval.max_ratings"),
    R.Relation(("eval.min_ratings", "data.query_size"), lambda a, q: a > q,
               "eval.min_ratings must exceed data.query_size (an evaluation"
               " task keeps at least one support rating)"),
    R.Relation(("model.loss", "data.implicit.enabled"),
               lambda loss, on: on or loss not in _RANKING_LOSSES.choices,
               "model.loss bce, bpr and softmax are losses of implicit"
               " feedback (data.implicit.enabled=true)"),
    R.Relation(("model.loss", "model.query_loss", "data.implicit.enabled"),
               lambda loss, query, on: not on or all(
                   x in _RANKING_LOSSES.choices for x in (loss, query or loss)),
               "implicit feedback (data.implicit.enabled=true) trains a"
               " ranking loss: model.loss (and model.query_loss, if set)"
               " bce, bpr or softmax; a rating loss on its 1/0 labels"
               " diverges in the inner loop"),
    R.Relation(("data.implicit.negatives", "data.implicit.enabled"),
               lambda negatives, on: not on or negatives >= 1,
               "implicit feedback needs sampled negatives"
               " (data.implicit.negatives >= 1): without them every label"
               " is a positive and there is nothing to rank against"),
    R.Relation(("data.implicit.threshold", "data.implicit.enabled",
                "data.name", "data.generic.rating_col"),
               lambda threshold, on, name, rating_col: (
                   not on or not threshold or name != "generic"
                   or bool(rating_col)),
               "data.implicit.threshold compares ratings, but"
               " data.generic.rating_col is empty (a file without a rating"
               " column: every line is a positive): name the rating column,"
               " or drop the threshold"),
    R.Relation(("distill.teacher", "data.implicit.enabled"),
               lambda teacher, on: not teacher or not on,
               "distill.teacher blends the teacher's predicted ratings into"
               " the query ratings; on implicit feedback they are 1/0"
               " labels (a blend turns positives into negatives): set"
               " distill.teacher=\"\""),
    R.Relation(("model.query_rank_weight", "model.loss", "model.query_loss"),
               lambda w, loss, query: (not w or (query or loss)
                                       in _RATING_LOSSES.choices),
               "model.query_rank_weight adds a listwise term to a rating"
               " loss (mse, huber); bce, bpr and softmax already rank: set"
               " it to 0"),
    R.Relation(("model.support_rank_weight", "model.loss"),
               lambda w, loss: not w or loss in _RATING_LOSSES.choices,
               "model.support_rank_weight adds a listwise term to a rating"
               " loss (mse, huber); bce, bpr and softmax already rank: set"
               " it to 0"),
    R.Relation(("model.members", "model.name"),
               lambda members, name: members == 1 or name == "melu",
               "model.members > 1 is an ensemble of `melu` models: set"
               " model.name=melu, or model.members=1"),
    R.Relation(("model.members", "model.anchor", "data.implicit.enabled"),
               lambda members, anchor, implicit: (
                   members == 1 or not anchor
                   or implicit),  # (implicit models are never anchored)
               "model.members > 1 is an ensemble without the baseline"
               " anchor: set model.anchor=false, or model.members=1"),
    R.Relation(("model.members", "meta.algorithm"),
               lambda members, algorithm: members == 1 or algorithm not in (
                   "metric", "amortised", "hybrid", "metasgd"),
               "model.members > 1 adapts each member by gradient steps with"
               " rates shared by the members; the encoding algorithms"
               " (metric, amortised, hybrid) read one model's features and"
               " metasgd learns a rate per parameter: set model.members=1"),
    # Checked here, before a store is built, not where the model is.
    R.Relation(("meta.msl_weights", "meta.inner_steps"),
               lambda w, steps: not w or len(w) == steps,
               "meta.msl_weights has one weight per inner step"
               " (meta.inner_steps), or none"),
    # MAML++ learns a rate per inner step: with none, zero-size arrays that
    # no checkpoint can hold (every save failed, after the first step).
    R.Relation(("meta.algorithm", "meta.inner_steps"),
               lambda algorithm, steps: algorithm != "mamlpp" or steps > 0,
               "meta.algorithm=mamlpp learns a rate per inner step: give it"
               " meta.inner_steps >= 1 (or use maml)"),
    R.Relation(("meta.msl_weights", "meta.algorithm"),
               lambda w, algorithm: not w or _algorithm(algorithm).msl,
               "meta.msl_weights weighs the query loss after each inner"
               " step of maml, fomaml, metasgd or mamlpp; set it to ()"),
    R.Relation(("meta.algorithm", "model.anchor", "model.name",
                "model.anchor_version", "data.implicit.enabled"),
               lambda algorithm, anchor, name, version, implicit: not (
                   _algorithm(algorithm).encoder and anchor
                   and not implicit  # (implicit models are never anchored)
                   and (name == "melu" or (name == "idemb"
                                           and int(version) >= 2))),
               "the encoding algorithms (metric, amortised, hybrid) read a"
               " model's support rows, and the baseline-anchored models"
               " (model.anchor) have none: set model.anchor=false"
               " (configs/learners.py does)"),
    R.Relation(("eval.new_user_fraction", "eval.val_fraction"),
               lambda a, b: a + b < 1, "eval.new_user_fraction +"
               " eval.val_fraction must be below 1 (training needs users)"),
)
# Sections whose keys are names of the user's data (`config_io`'s open
# sections): the rule of every key.
OPEN_SECTIONS = {section: R.Int(1) for section in config_io.OPEN_SECTIONS}


def validate(config: ml_collections.ConfigDict, *,
             sections: tuple[str, ...] | None = None) -> None:
  """Checks every key's type and range, then the facts between keys.

  Cheap, and writes nothing (it imports the modules that hold a key's
  allowed values, JAX among them): commands call it before they build or
  create anything. Keys without a rule (a config variant's own extras) are
  left to the code that reads them.

  Args:
    config: the config to check.
    sections: the top-level sections the command reads (None: every one,
      as the commands that build a model do). A relation is checked only
      where all of its keys lie in them: `metarec data prepare` reads the
      `data` section alone, so a fact between the data and the model
      (implicit feedback trains a ranking loss) is not its to demand. Every
      key's own rule is checked whatever the sections.

  Raises:
    InputError: one line naming the key, its value and what is allowed.
  """
  values = config_io.flat(config)
  for key, value in values.items():
    section = key.rpartition(".")[0]
    rule = ALLOWED.get(key) or OPEN_SECTIONS.get(section)
    problem = rule.problem(value) if rule is not None else None
    if problem is not None:
      raise InputError(f"config key {key}={excerpt(value)}: {problem}")
  for relation in RELATIONS:
    if sections is not None and not all(
        k.partition(".")[0] in sections for k in relation.keys):
      continue
    if all(k in values for k in relation.keys):
      problem = relation.problem(tuple(values[k] for k in relation.keys))
      if problem is not None:
        got = ", ".join(f"{k}={excerpt(values[k])}" for k in relation.keys)
        raise InputError(f"{problem} ({got})")


def validate_run(config: ml_collections.ConfigDict,
                 workdir: str | None) -> None:
  """`validate` of a work directory's config with a command's overrides
  applied (`workdir` None: of a config from elsewhere): a problem that
  `WORKDIR/config.json` has on its own (a value edited by hand) names that
  file, as its other problems do; one an override brought in does not."""
  try:
    validate(config)
  except InputError as e:
    if workdir is None:
      raise
    try:
      validate(config_io.read_workdir_config(workdir))
    except InputError as own:
      if own.message == e.message:
        raise InputError(e.problem, path=os.path.join(
            workdir, config_io.WORKDIR_CONFIG)) from None
    raise
