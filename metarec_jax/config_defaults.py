"""The default of every config key, and what a config without a key means.

`get_config()` is the one place a key's default is written; its meaning
and allowed values are in `config_meanings.MEANINGS` and
`config_reference.ALLOWED` (and in the README's config reference, generated
from all three). `configs/default.py`, the quickstart every shipped config
builds on, is this config.

The defaults live in the package rather than in `configs/` because the
package completes configs itself (`config_io.complete`): a work directory's
`config.json`, a checkpoint's or an export's config written before a key
existed, or a partial config of a library caller.
"""

import ml_collections

# A config that lacks a key runs as it did before the key existed: these
# keys' defaults for new configs differ from that earlier behaviour (every
# other missing key takes its default).
BEFORE_KEY = {
    "model.anchor": False,
    "model.anchor_version": 1,
    "model.global_mean": "all",
    "meta.inner_lr_scale": "none",
    "model.calibration": "none",
    "model.new_item_prior": "same",
    "model.new_item_min_support": "none",
    "model.popularity_prior": False,
    "data.item_id_dropout": 0.0,
    "train.early_stop_patience": 0,
    "model.table_row_multiple": 1,
    "model.id_init": "normal",
    "model.cold_share": "same",
    "train.unadapted_weight": 0.0,
    "model.warm_min_support": "none",
    "model.cold_blend": "none",
}

# The keys of the first work directories' config.json (2026-11-23), by
# section: every config.json metarec wrote has them, so one without them is
# damaged or edited, not older (`config_io.read_workdir_config`). Completed
# from the defaults instead, a config.json without its `model` section was
# reported as a checkpoint "of another model".
FIRST_KEYS = {
    "model": "name features embed_dim hidden",
    "data": "name root store max_support min_support query_size"
            " support_sampling buckets",
    "data.synthetic": "num_users num_items min_ratings max_ratings seed"
                      " personal_scale noise new_item_fraction",
    "meta": "algorithm inner_steps inner_lr second_order adapt"
            " inner_optimizer remat dual_form unroll msl_weights",
    "train": "seed num_steps tasks_per_step chunk_tasks lr warmup_steps"
             " end_lr_factor grad_clip eval_every_steps max_nonfinite"
             " prefetch cpu_devices",
    "eval": "seed new_user_fraction val_fraction min_ratings max_ratings"
            " max_tasks batch_tasks",
    "checkpoint": "every_steps keep",
    "log": "every_steps",
}

# The most JAX devices a CPU host is split into (`train.cpu_devices`, and
# the automatic count of `runtime.configure_cpu_devices`). Each is a device
# with its own buffers and threads: train.cpu_devices=1000000 (and
# mesh.model=1000000, one CPU device per model shard) ran for 7 minutes
# into 24 GB and was killed, without a word. 256 is far above the devices
# of any accelerator host, whose layouts a CPU run rehearses.
MAX_CPU_DEVICES = 256


def get_config() -> ml_collections.ConfigDict:
  """The default config: MeLU meta-trained with second-order MAML on
  built-in synthetic data."""
  return ml_collections.ConfigDict({
      "model": {
          "name": "melu", "features": (), "exclude_features": (),
          "embed_dim": 32, "hidden": (64, 64), "members": 1, "embed_std": 1.0,
          "id_init": "svd",
          "item_id": False, "anchor": True, "anchor_version": 2,
          "global_mean": "training",
          "user_bias_prior": 3.0, "new_item_prior": "validated",
          "cold_share": "validated", "cold_blend": "validated",
          "new_item_min_support": "validated",
          "warm_min_support": "validated",
          "calibration": "median", "popularity_prior": True,
          "loss": "mse", "query_loss": "", "huber_delta": 1.0,
          "query_rank_weight": 0.0, "support_rank_weight": 0.0,
          "interaction": "dot", "item_features": True,
          "compute_dtype": "float32", "table_row_multiple": 1024,
      },
      "data": {
          "name": "synthetic", "root": "", "store": "", "max_support": 32,
          "min_support": 3, "query_size": 10, "train_query_size": 0,
          "support_sampling": "max",
          "buckets": (8, 16, 32, 64, 128), "item_id_dropout": 0.1,
          "list_pad": {"genre": 4, "director": 2, "actor": 4},
          "implicit": {
              "enabled": False, "threshold": 0.0, "negatives": 1,
              "sampling": "uniform", "eval_negatives": 100,
          },
          "synthetic": {
              "num_users": 6000, "num_items": 2000, "min_ratings": 20,
              "max_ratings": 100, "seed": 0, "personal_scale": 1.0,
              "noise": 0.3, "new_item_fraction": 0.2,
          },
          "generic": {
              "ratings": "ratings.csv", "delimiter": ",", "header": True,
              "encoding": "utf-8", "user_col": "user", "item_col": "item",
              "rating_col": "rating", "timestamp_col": "", "rating_min": 1.0,
              "rating_max": 5.0, "user_features": "", "item_features": "",
              "feature_delimiter": "", "categorical": (), "lists": (),
              "numeric": (), "numeric_bins": 10,
              "list_sep": "|", "missing": ("",), "new_item_col": "",
              "new_item_year": 0, "id_features": False, "quoting": "auto",
          },
      },
      "meta": {
          "algorithm": "maml", "inner_steps": 3, "inner_lr": 0.1,
          "inner_lr_scale": "rating_width",
          "second_order": True, "adapt": (), "inner_optimizer": "sgd",
          "remat": False, "dual_form": True, "unroll": 0, "msl_weights": (),
          "encoder_hidden": 64,
      },
      "distill": {"teacher": "", "weight": 0.5},
      "train": {
          "seed": 0, "num_steps": 1500, "schedule_steps": 0,
          "tasks_per_step": 64, "chunk_tasks": 0, "lr": 2e-3,
          "warmup_steps": 100, "end_lr_factor": 0.05, "grad_clip": 1.0,
          "unadapted_weight": 0.02,
          "eval_every_steps": 250, "early_stop_patience": 3,
          "select_on": "model",
          "max_nonfinite": 10, "preempt_exit_code": 0, "prefetch": 2,
          "input_workers": 0, "cpu_devices": 0,
      },
      "mesh": {"model": 1, "shard_min_rows": 65536},
      "eval": {
          "seed": 0, "new_user_fraction": 0.2, "val_fraction": 0.0,
          "min_ratings": 13, "max_ratings": 100, "max_tasks": 1000,
          "batch_tasks": 128, "catalog_block": 1024,
      },
      "checkpoint": {"every_steps": 500, "keep": 3},
      "log": {"every_steps": 100, "histogram_every_steps": 500},
  })
