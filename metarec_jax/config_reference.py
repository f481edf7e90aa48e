"""The meaning and the allowed values of every config key, and the README's
table generated from them.

`MEANINGS` is the one place a key's meaning is written, `ALLOWED` (and
`RELATIONS`, between keys) the one place its type and range are; `validate`
checks a config against them. The README's "Config reference" table is
generated from them and `configs/default.py` (`config_table`).

A dict beside the code, rather than parsed comments in `configs/default.py`:
the defaults file stays plain Python any variant can import (sections built
from dict literals, `update()` calls and all), the key set is checked both
ways by the test, and the same text serves TensorBoard's HParams tooltips.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from metarec_jax import config_io
from metarec_jax import config_rules as R
from metarec_jax.errors import InputError, excerpt

MEANINGS: dict[str, str] = {
    # model
    "model.name": "Model family: `melu` (feature embeddings + decision MLP)"
                  " or `idemb` (item ID embeddings and one meta-learned user"
                  " embedding).",
    "model.interaction": "`idemb` only: `dot` (user . item + biases) or `mlp`"
                         " (an MLP of `model.hidden` on both embeddings).",
    "model.item_features": "`idemb` only: add the item's feature embeddings"
                           " to its ID embedding, so new items are not"
                           " blind.",
    "model.features": "Feature fields the model reads (names of the data's"
                      " schema); `()` = all of them.",
    "model.exclude_features": "Feature fields left out of `model.features`"
                              " (e.g. a near-unique `zip`).",
    "model.embed_dim": "Width of every feature embedding.",
    "model.loss": "Loss of the inner and the outer loop: `mse` or"
                  " `huber` (quadratic within `huber_delta`, linear beyond:"
                  " predictions nearer the median, which MAE rewards) for"
                  " ratings; `bce` (binary cross-entropy), `bpr` (pairwise,"
                  " every positive against every negative of the set) or"
                  " `softmax` (sampled softmax: each positive against the"
                  " set's negatives) for implicit feedback.",
    "model.query_loss": "Loss of the query sets, the meta-objective (one of"
                        " `model.loss`'s); `\"\"` = `model.loss`. `huber`"
                        " here with `mse` inside adapts by least squares but"
                        " meta-learns for MAE.",
    "model.huber_delta": "`model.loss=huber`: where the loss turns from"
                         " quadratic to linear.",
    "model.embed_std": "`melu`: standard deviation of the initial feature"
                       " embeddings (the paper's PyTorch default is 1).",
    "model.item_id": "`melu`: also embed each item's ID (zero-initialised,"
                     " so items unseen in training add nothing); lets the"
                     " model learn item-specific quality.",
    "model.anchor": "`melu`: start from the item-mean + user-bias baseline:"
                    " rating = global + item bias (started at the shrunk"
                    " item means, predicted from item features for new"
                    " items) + user bias (adapted, shrunk like the"
                    " baseline's) + the decision MLP (zero at first), which"
                    " learns only the interaction (`models/anchored.py`).",
    "model.user_bias_prior": "`model.anchor`: pseudo-ratings shrinking the"
                             " adapted user bias towards 0 (the baseline"
                             " uses 3).",
    "model.compute_dtype": "Precision of the model's arithmetic in the inner"
                           " loop and the meta-gradient: `float32` or"
                           " `bfloat16` (mixed precision: parameters,"
                           " adapted leaves and optimizer state stay"
                           " float32, the losses reduce in float32;"
                           " `models/precision.py`). Predictions for eval,"
                           " export and serving use the float32"
                           " parameters.",
    "model.hidden": "Widths of the decision MLP's hidden layers (one output"
                    " unit follows).",
    # data
    "data.name": "Dataset: `synthetic` (built-in generator), `movielens-1m`,"
                 " `movielens-100k` or `generic` (your own files).",
    "data.root": "Folder of the dataset's input files (real datasets).",
    "data.store": "Prepared task store; `\"\"` = `WORKDIR/store`, built on"
                  " first use when missing.",
    "data.item_id_dropout": "Share of training rows whose `item_id` feature"
                             " is hidden, so a model that embeds item IDs"
                             " also learns to rate from item features alone"
                             " (as it must for new items).",
    "data.max_support": "Support ratings per training task at most.",
    "data.min_support": "Training users need `query_size + min_support`"
                        " training ratings.",
    "data.query_size": "Query ratings per task (training and evaluation).",
    "data.support_sampling": "Support-set size in training: `max` (all of"
                             " a user's ratings up to `max_support`) or"
                             " `uniform` (drawn between `min_support` and"
                             " that).",
    "data.buckets": "Support widths batches are padded to; one compiled"
                    " meta-step per width up to `max_support`.",
    "data.list_pad.genre": "Genres per item kept (list feature padding).",
    "data.list_pad.director": "Directors per item kept (list feature"
                              " padding).",
    "data.list_pad.actor": "Actors per item kept (list feature padding).",
    "data.implicit.enabled": "Implicit feedback: the store keeps only"
                             " positives, tasks get sampled negatives"
                             " (label 0) and `eval` reports top-k ranking"
                             " metrics (see `metarec_jax/data/implicit.py`).",
    "data.implicit.threshold": "Implicit: ratings >= threshold are positives"
                               " (0 = every row; a generic file with an"
                               " empty `rating_col` has only positives).",
    "data.implicit.negatives": "Implicit: negatives per positive in the"
                               " support and query sets (never an item the"
                               " user interacted with).",
    "data.implicit.sampling": "Implicit: training negatives drawn `uniform`"
                              " or `popularity`-weighted (training"
                              " positives' counts).",
    "data.implicit.eval_negatives": "Implicit: sampled evaluation ranks the"
                                    " held-out positives against this many"
                                    " negatives per positive.",
    "data.synthetic.num_users": "Synthetic data: number of users.",
    "data.synthetic.num_items": "Synthetic data: number of items.",
    "data.synthetic.min_ratings": "Synthetic data: fewest ratings of a"
                                  " user.",
    "data.synthetic.max_ratings": "Synthetic data: most ratings of a user.",
    "data.synthetic.seed": "Synthetic data: generator seed.",
    "data.synthetic.personal_scale": "Synthetic data: weight of each user's"
                                     " personal (unobservable) taste; what"
                                     " adaptation can recover.",
    "data.synthetic.noise": "Synthetic data: standard deviation of the"
                            " rating noise.",
    "data.synthetic.new_item_fraction": "Synthetic data: share of items that"
                                        " are *new* (the IC and UIC"
                                        " scenarios).",
    "data.generic.ratings": "Generic data: the ratings file (relative to"
                            " `data.root`), one rating per line.",
    "data.generic.delimiter": "Generic data: field separator of every file"
                              " (`\\t` = tab, `::` allowed).",
    "data.generic.header": "Generic data: the ratings file's first line names"
                           " its columns.",
    "data.generic.encoding": "Generic data: text encoding of every file.",
    "data.generic.user_col": "Generic data: user id column (a header name, or"
                             " a 0-based position without a header).",
    "data.generic.item_col": "Generic data: item id column.",
    "data.generic.rating_col": "Generic data: rating column.",
    "data.generic.timestamp_col": "Generic data: integer timestamp column that"
                                  " orders each user's ratings; `\"\"` = none.",
    "data.generic.rating_min": "Generic data: lowest rating of the scale (a"
                               " rating outside the scale is an error).",
    "data.generic.rating_max": "Generic data: highest rating of the scale.",
    "data.generic.user_features": "Generic data: user feature table (header"
                                  " line, id first); `\"\"` = none.",
    "data.generic.item_features": "Generic data: item feature table (header"
                                  " line, id first); `\"\"` = none.",
    "data.generic.feature_delimiter": "Generic data: separator of the feature"
                                      " tables; `\"\"` = `delimiter`.",
    "data.generic.categorical": "Generic data: feature columns holding one"
                                " category per row.",
    "data.generic.lists": "Generic data: feature columns holding lists"
                          " (padded to `data.list_pad[name]`).",
    "data.generic.list_sep": "Generic data: separator of a list column's"
                             " entries.",
    "data.generic.missing": "Generic data: values that mean missing (index"
                            " 0).",
    "data.generic.new_item_col": "Generic data: item table column marking new"
                                 " items for the protocol; `\"\"` = none.",
    "data.generic.new_item_year": "Generic data: 0 = `new_item_col` is 0/1;"
                                  " else a year, the item is new if >= it.",
    "data.generic.id_features": "Generic data: also use the user and item ids"
                                " as categorical features (`user_key`,"
                                " `item_key`).",
    # meta
    "meta.algorithm": "`maml`, `fomaml` (first-order MAML), `reptile`,"
                      " `metasgd` (learned per-element inner rates), `mamlpp`"
                      " (learned per-step, per-leaf inner rates),"
                      " `pretrain` (no meta-learning: joint training,"
                      " fine-tuned per user at evaluation), `metric`"
                      " (rating-weighted prototype of the support items),"
                      " `amortised` (TaNP-style set encoder; both adapt in"
                      " one forward pass, no inner steps) or `hybrid`"
                      " (the set encoder, then `inner_steps` steps).",
    "meta.inner_steps": "Inner-loop gradient steps on the support set.",
    "meta.inner_lr": "Inner learning rate (the initial value of the learned"
                     " rates of `metasgd` and `mamlpp`).",
    "meta.second_order": "Differentiate through the inner gradients (exact"
                         " MAML); false = first-order.",
    "meta.adapt": "Regular expressions of the parameter paths the inner"
                  " loop adapts; `()` = the model's default (MeLU: the"
                  " decision MLP).",
    "meta.inner_optimizer": "Inner-loop optimizer: `sgd`, `momentum` or"
                            " `adam`.",
    "meta.remat": "Rematerialise each inner step in the backward pass"
                  " (memory O(1) in `inner_steps`, for recomputation).",
    "meta.dual_form": "Where the loss is a `LinearHead` (MeLU) and the"
                      " inner optimizer plain SGD, run its first layer in"
                      " the exact dual (Gram) form: same values, less"
                      " arithmetic.",
    "meta.unroll": "Unroll factor of the inner `lax.scan`; 0 = per"
                   " backend: fully unrolled up to 8 inner steps on CPU,"
                   " 32 on accelerators, rolled beyond (fastest for a few"
                   " inner steps; 1 bounds the compile time of many;"
                   " `metarec_jax/backend.py` says why).",
    "meta.msl_weights": "MAML++ multi-step loss: weight of the query loss"
                        " after each inner step; `()` = final step only.",
    # train
    "train.seed": "Seed of the initial parameters and the task sampler.",
    "train.num_steps": "Meta-steps to train. A resume with more steps"
                       " extends the run; see `train.schedule_steps` for"
                       " what its learning rate does.",
    "train.schedule_steps": "Length in steps of the learning-rate schedule"
                            " (warm-up, cosine decay to `lr *"
                            " end_lr_factor`, then that final rate); 0 ="
                            " `train.num_steps` for a new run and, on"
                            " resume, the length the run already has (the"
                            " resolved value is saved), so extending a run"
                            " never makes the rate jump. Set it (e.g. to"
                            " the new `num_steps`) to re-stretch the"
                            " cosine: the rate then jumps at the resume"
                            " point, as asked.",
    "train.tasks_per_step": "Tasks in a global meta-batch (a multiple of"
                            " the device count and the chunk size).",
    "train.chunk_tasks": "Tasks per device per accumulation chunk (bounds"
                         " memory); 0 = per backend (16 on CPU, the whole"
                         " per-device batch on accelerators;"
                         " `metarec_jax/backend.py`).",
    "train.lr": "Peak outer (Adam) learning rate.",
    "train.warmup_steps": "Linear warm-up steps of the outer learning"
                          " rate.",
    "train.end_lr_factor": "The cosine decay ends at `lr * end_lr_factor`.",
    "train.grad_clip": "Clip the meta-gradient to this global norm.",
    "train.eval_every_steps": "Validation every this many steps (and at the"
                              " end); 0 = only at the end; -1 = never (no"
                              " validation programs are compiled).",
    "train.early_stop_patience": "Stop after this many validations"
                                 " without a better validation MAE; 0 ="
                                 " never. Every validation that improves"
                                 " is saved as a checkpoint, and the best"
                                 " is what `eval` and `export` use by"
                                 " default.",
    "train.max_nonfinite": "Stop after this many consecutive steps whose"
                           " loss, meta-gradient or update is not finite"
                           " (each one keeps the previous state).",
    "train.preempt_exit_code": "Exit status after a SIGTERM/SIGINT stopped"
                               " the run and saved it (0 = success; a"
                               " scheduler that requeues failed jobs wants"
                               " another).",
    "train.prefetch": "Batches the input thread prepares ahead.",
    "train.cpu_devices": "CPU only: JAX devices to split the host into;"
                         " 0 = one per core (dividing `tasks_per_step`).",
    # mesh
    "mesh.model": "Devices on the mesh's `model` axis: each embedding table"
                  " of at least `mesh.shard_min_rows` rows (a multiple of"
                  " this) is split by rows over them, with its optimizer"
                  " state; the other devices split the tasks. 1 = every"
                  " parameter replicated. Must divide each process's"
                  " devices; the inner loop must not adapt a split table.",
    "mesh.shard_min_rows": "`mesh.model` > 1: embedding tables with fewer"
                           " rows stay replicated.",
    # eval
    "eval.seed": "Seed of the protocol split (user groups, query sets,"
                 " task subsampling) and of the support-curve cuts.",
    "eval.new_user_fraction": "Share of users held out as *new* (UC, UIC).",
    "eval.val_fraction": "Share of existing users held out for validation.",
    "eval.min_ratings": "Fewest ratings of a user in an item class for an"
                        " evaluation task.",
    "eval.max_ratings": "Most ratings of a user in an item class for an"
                        " evaluation task.",
    "eval.max_tasks": "Evaluation tasks per scenario at most; 0 = all.",
    "eval.batch_tasks": "Tasks adapted at once in evaluation.",
    "eval.catalog_block": "Implicit: items scored at once per user when"
                          " ranking the full catalog (bounds memory).",
    # checkpoint
    "checkpoint.every_steps": "Save a checkpoint every this many steps (and"
                              " at the end or on a stop signal).",
    "checkpoint.keep": "Newest checkpoints kept.",
    # log
    "log.every_steps": "Log training metrics every this many steps.",
    "log.histogram_every_steps": "TensorBoard histograms of the parameters"
                                 " and learned inner rates every this many"
                                 " steps (and at the end); 0 = never.",
}


_MODELS, _META = "metarec_jax.models.factory", "metarec_jax.meta.config"
_COUNT, _SHARE = R.Int(0), R.Float(0.0, 1.0)
_RATE = R.Float(0.0, lo_open=True)  # a positive, finite rate or size
_NAMES = R.Tuple(R.Text(nonempty=True))

# What each key may be: one rule per key of MEANINGS (the test checks both
# ways). `validate` applies them before a command builds or creates
# anything; the README's table shows them.
ALLOWED: dict[str, Any] = {
    "model.name": R.OneOf(_MODELS, "MODELS"),
    "model.interaction": R.OneOf("metarec_jax.models.idemb", "INTERACTIONS"),
    "model.item_features": R.Bool(),
    "model.features": _NAMES,
    "model.exclude_features": _NAMES,
    "model.embed_dim": R.Int(1),
    "model.loss": R.OneOf("metarec_jax.models.recommender", "LOSSES"),
    "model.query_loss": R.OneOf("metarec_jax.models.recommender", "LOSSES",
                                 empty=True),
    "model.huber_delta": _RATE,
    "model.embed_std": R.Float(0.0),
    "model.item_id": R.Bool(),
    "model.anchor": R.Bool(),
    "model.user_bias_prior": R.Float(0.0),
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
    "data.generic.delimiter": R.Text(nonempty=True),
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
    "data.generic.list_sep": R.Text(nonempty=True),
    "data.generic.missing": R.Tuple(R.Text()),
    "data.generic.new_item_col": R.Text(),
    "data.generic.new_item_year": _COUNT,
    "data.generic.id_features": R.Bool(),
    "meta.algorithm": R.OneOf(_META, "ALGORITHMS"),
    "meta.inner_steps": _COUNT,
    "meta.inner_lr": _RATE,
    "meta.second_order": R.Bool(),
    "meta.adapt": _NAMES,
    "meta.inner_optimizer": R.OneOf(_META, "INNER_OPTIMIZERS"),
    "meta.remat": R.Bool(),
    "meta.dual_form": R.Bool(),
    "meta.unroll": _COUNT,
    "meta.msl_weights": R.Tuple(R.Float(0.0)),
    "train.seed": _COUNT,
    "train.num_steps": R.Int(1),
    "train.schedule_steps": _COUNT,
    "train.tasks_per_step": R.Int(1),
    "train.chunk_tasks": _COUNT,
    "train.lr": _RATE,
    "train.warmup_steps": _COUNT,
    "train.end_lr_factor": R.Float(0.0),
    "train.grad_clip": _RATE,
    "train.eval_every_steps": R.Int(-1),
    "train.early_stop_patience": _COUNT,
    "train.max_nonfinite": R.Int(1),
    "train.preempt_exit_code": R.Int(0, 255),
    "train.prefetch": R.Int(1),
    "train.cpu_devices": _COUNT,
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
    R.Relation(("data.generic.rating_min", "data.generic.rating_max"),
               lambda a, b: a < b, "data.generic.rating_min must be below"
               " data.generic.rating_max"),
    R.Relation(("eval.min_ratings", "eval.max_ratings"), lambda a, b: a <= b,
               "eval.min_ratings must not exceed eval.max_ratings"),
    R.Relation(("eval.min_ratings", "data.query_size"), lambda a, q: a > q,
               "eval.min_ratings must exceed data.query_size (an evaluation"
               " task keeps at least one support rating)"),
    R.Relation(("model.loss", "data.implicit.enabled"),
               lambda loss, on: on or loss not in ("bce", "bpr", "softmax"),
               "model.loss bce, bpr and softmax are losses of implicit"
               " feedback (data.implicit.enabled=true)"),
    R.Relation(("eval.new_user_fraction", "eval.val_fraction"),
               lambda a, b: a + b < 1, "eval.new_user_fraction +"
               " eval.val_fraction must be below 1 (training needs users)"),
)
# Sections whose keys are names of the user's data: the rule of every key.
OPEN_SECTIONS = {"data.list_pad": R.Int(1)}


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every key's type and range, then the facts between keys.

  Cheap and free of side effects: commands call it before they build or
  create anything. Keys without a rule (a config variant's own extras) are
  left to the code that reads them.

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
    if all(k in values for k in relation.keys):
      problem = relation.problem(tuple(values[k] for k in relation.keys))
      if problem is not None:
        got = ", ".join(f"{k}={excerpt(values[k])}" for k in relation.keys)
        raise InputError(f"{problem} ({got})")
