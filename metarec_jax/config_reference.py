"""The meaning of every config key, and the README's table generated from it.

`MEANINGS` is the one place a key's meaning is written. The README's
"Config reference" table (between the `config-reference` marker comments)
is generated from it and `configs/default.py` by
`tools/config_reference.py`, and a test fails when a key of the default
config has no meaning here, when a meaning names a key that no longer
exists, or when the README's table differs from the generated one.

A dict beside the code, rather than parsed comments in `configs/default.py`:
the defaults file stays plain Python any variant can import (sections built
from dict literals, `update()` calls and all), the key set is checked both
ways by the test, and the same text serves TensorBoard's HParams tooltips.
"""

from __future__ import annotations

from typing import Any

import ml_collections

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"

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
    "model.loss": "Rating loss of the inner and the outer loop: `mse` or"
                  " `huber` (quadratic within `huber_delta`, linear beyond:"
                  " predictions nearer the median, which MAE rewards).",
    "model.query_loss": "Loss of the query sets, the meta-objective (`mse` or"
                        " `huber`); `\"\"` = `model.loss`. `huber` here with"
                        " `mse` inside adapts by least squares but"
                        " meta-learns for MAE.",
    "model.huber_delta": "`model.loss=huber`: where the loss turns from"
                         " quadratic to linear.",
    "model.embed_std": "`melu`: standard deviation of the initial feature"
                       " embeddings (the paper's PyTorch default is 1).",
    "model.item_id": "`melu`: also embed each item's ID (zero-initialised,"
                     " so items unseen in training add nothing); lets the"
                     " model learn item-specific quality.",
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
                      " (learned per-step, per-leaf inner rates) or"
                      " `pretrain` (no meta-learning: joint training,"
                      " fine-tuned per user at evaluation).",
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
    "meta.unroll": "Unroll factor of the inner `lax.scan`; 0 = fully"
                   " unrolled (fastest for a few inner steps; 1 bounds the"
                   " compile time of many).",
    "meta.msl_weights": "MAML++ multi-step loss: weight of the query loss"
                        " after each inner step; `()` = final step only.",
    # train
    "train.seed": "Seed of the initial parameters and the task sampler.",
    "train.num_steps": "Meta-steps to train.",
    "train.tasks_per_step": "Tasks in a global meta-batch (a multiple of"
                            " the device count and the chunk size).",
    "train.chunk_tasks": "Tasks per device per accumulation chunk (bounds"
                         " memory); 0 = automatic (16 on CPU, the whole"
                         " per-device batch on accelerators).",
    "train.lr": "Peak outer (Adam) learning rate.",
    "train.warmup_steps": "Linear warm-up steps of the outer learning"
                          " rate.",
    "train.end_lr_factor": "The cosine decay ends at `lr * end_lr_factor`.",
    "train.grad_clip": "Clip the meta-gradient to this global norm.",
    "train.eval_every_steps": "Validation every this many steps (and at the"
                              " end); 0 = only at the end; -1 = never (no"
                              " validation programs are compiled).",
    "train.max_nonfinite": "Stop after this many consecutive non-finite"
                           " meta-gradients (each one skips its update).",
    "train.preempt_exit_code": "Exit status after a SIGTERM/SIGINT stopped"
                               " the run and saved it (0 = success; a"
                               " scheduler that requeues failed jobs wants"
                               " another).",
    "train.prefetch": "Batches the input thread prepares ahead.",
    "train.cpu_devices": "CPU only: JAX devices to split the host into;"
                         " 0 = one per core (dividing `tasks_per_step`).",
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


def leaf_items(config: ml_collections.ConfigDict,
               prefix: str = "") -> list[tuple[str, Any]]:
  """`(dotted key, value)` of every leaf of `config`, in key order."""
  out = []
  for name, value in config.items():
    key = f"{prefix}{name}"
    if isinstance(value, ml_collections.ConfigDict):
      out.extend(leaf_items(value, key + "."))
    else:
      out.append((key, value))
  return out


def format_default(value: Any) -> str:
  """A default as Python text: `"melu"`, `(8, 16)`, `()`, `0.002`."""
  if isinstance(value, list):
    value = tuple(value)
  if isinstance(value, str):
    return '"' + value + '"'
  return repr(value)


def check(config: ml_collections.ConfigDict) -> list[str]:
  """Problems: keys without a meaning and meanings of unknown keys."""
  keys = [k for k, _ in leaf_items(config)]
  problems = [f"config key {k} has no meaning in"
              " metarec_jax/config_reference.py MEANINGS"
              for k in keys if not MEANINGS.get(k, "").strip()]
  problems += [f"MEANINGS names {k}, which the default config does not have"
               for k in MEANINGS if k not in keys]
  return problems


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(config: ml_collections.ConfigDict) -> str:
  """The markdown table `| key | default | meaning |` of every leaf key.

  Raises:
    KeyError: a key has no meaning (see `check`).
  """
  lines = ["| key | default | meaning |", "| --- | --- | --- |"]
  for key, value in leaf_items(config):
    if key not in MEANINGS:
      raise KeyError(f"config key {key} has no meaning in MEANINGS")
    lines.append(f"| `{key}` | `{_cell(format_default(value))}` |"
                 f" {_cell(MEANINGS[key])} |")
  return "\n".join(lines)


def section(text: str) -> str | None:
  """What lies between the README's markers (stripped), or None."""
  start, end = text.find(START), text.find(END)
  if start < 0 or end < start:
    return None
  return text[start + len(START):end].strip()


def replace_section(text: str, table: str) -> str:
  """`text` with the part between the markers replaced by `table`.

  Raises:
    ValueError: the markers are missing or out of order.
  """
  start, end = text.find(START), text.find(END)
  if start < 0 or end < start:
    raise ValueError(f"no {START} ... {END} section")
  return text[:start + len(START)] + "\n" + table + "\n" + text[end:]
