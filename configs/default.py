"""Quickstart: MeLU meta-trained with second-order MAML on built-in synthetic data.

Run:

    metarec train --config=configs/default.py --workdir=/tmp/metarec-default
    metarec eval --workdir=/tmp/metarec-default

Expect: about two minutes on a 2-core laptop CPU (store build, compile,
training and the final evaluation), and a query MAE after adaptation well
below the MAE of the meta-parameters before adaptation (`mae` against
`mae_unadapted` in every scenario of `metarec eval`).

Every other config imports this one and overrides only what changes; every
key is documented in the README's config reference.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.name = "melu"  # or "idemb" (item IDs + a meta-learned user vector)
  c.model.features = ()  # feature fields the model reads; () = all
  c.model.exclude_features = ()  # ... except these
  c.model.embed_dim = 32
  c.model.hidden = (64, 64)  # MLP widths: melu decision, idemb "mlp"
  c.model.embed_std = 1.0  # melu: initial std of the feature embeddings
  c.model.item_id = False  # melu: also embed the item's ID (zero-init)
  # melu: start from the baseline: global + item bias + adapted user bias
  # (shrunk with user_bias_prior pseudo-ratings), the MLP adds the rest
  # (ratings only: implicit feedback has no such baseline)
  c.model.anchor = True
  c.model.user_bias_prior = 3.0
  c.model.loss = "mse"  # inner and outer loss: "mse" or "huber" (ratings);
  #                       "bce", "bpr" or "softmax" (implicit feedback)
  c.model.query_loss = ""  # the meta-objective's loss; "" = model.loss
  c.model.huber_delta = 1.0  # "huber": quadratic within delta, then linear
  c.model.interaction = "dot"  # idemb: "dot" (+ biases) or "mlp"
  c.model.item_features = True  # idemb: item features beside item IDs
  # arithmetic of the model's losses: "float32" or "bfloat16" (parameters
  # and optimizer state stay float32)
  c.model.compute_dtype = "float32"

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"
  c.data.root = ""  # folder of the dataset's files (real datasets)
  c.data.store = ""  # prepared task store; "" = WORKDIR/store
  c.data.max_support = 32
  c.data.min_support = 3
  c.data.query_size = 10
  c.data.support_sampling = "max"  # or "uniform" support sizes in training
  c.data.buckets = (8, 16, 32, 64, 128)
  # share of training rows with a hidden item_id (model.anchor: teaches the
  # item bias of new items from item features)
  c.data.item_id_dropout = 0.1
  c.data.list_pad = ml_collections.ConfigDict(
      {"genre": 4, "director": 2, "actor": 4})
  # Implicit feedback (clicks, views, purchases; see data/implicit.py).
  c.data.implicit = ml_collections.ConfigDict({
      "enabled": False,  # positives only; tasks get sampled negatives
      "threshold": 0.0,  # ratings >= threshold are positives (0: every row)
      "negatives": 1,  # negatives per positive in support and query sets
      "sampling": "uniform",  # training negatives: "uniform" or "popularity"
      "eval_negatives": 100,  # sampled evaluation: negatives per positive
  })
  c.data.synthetic = ml_collections.ConfigDict({
      "num_users": 6000, "num_items": 2000, "min_ratings": 20,
      "max_ratings": 100, "seed": 0, "personal_scale": 1.0, "noise": 0.3,
      "new_item_fraction": 0.2,
  })
  # data.name = "generic": your own files in data.root (see
  # metarec_jax/data/convert/generic.py). Paths are relative to data.root.
  c.data.generic = ml_collections.ConfigDict({
      "ratings": "ratings.csv",  # the ratings file: one rating per line
      "delimiter": ",",  # field separator of every file ("\t" = tab, "::")
      "header": True,  # the ratings file's first line names its columns
      "encoding": "utf-8",  # text encoding of every file
      # Columns of the ratings file: header names, or 0-based positions
      # ("0", "1", ...) when header is False.
      "user_col": "user",
      "item_col": "item",
      "rating_col": "rating",
      "timestamp_col": "",  # integer timestamps ordering each user's; "" = none
      "rating_min": 1.0,  # the rating scale: a rating outside it is an error
      "rating_max": 5.0,
      # Feature tables ("" = none): a header line, the id in the first
      # column, then feature columns (fields may be "quoted").
      "user_features": "",
      "item_features": "",
      "feature_delimiter": "",  # "" = the same as delimiter
      "categorical": (),  # feature columns holding one category per row
      "lists": (),  # feature columns holding lists (padded to list_pad[name])
      "list_sep": "|",  # separator of a list column's entries
      "missing": ("",),  # values meaning "missing" (index 0)
      "new_item_col": "",  # item table column marking new items; "" = none
      "new_item_year": 0,  # 0: new_item_col is 0/1; else a year, new if >= it
      "id_features": False,  # also use user and item ids as features
  })

  c.meta = ml_collections.ConfigDict()
  # maml, fomaml, reptile, metasgd, mamlpp, or pretrain (no meta-learning:
  # plain training, then per-user fine-tuning with the same inner loop)
  c.meta.algorithm = "maml"
  c.meta.inner_steps = 3
  c.meta.inner_lr = 0.1
  c.meta.second_order = True
  c.meta.adapt = ()  # () = the model's default (melu: the decision MLP;
  #                     idemb: the user embedding and bias)
  c.meta.inner_optimizer = "sgd"
  c.meta.remat = False
  c.meta.dual_form = True
  # inner-loop scan unroll factor; 0 = per backend (metarec_jax/backend.py)
  c.meta.unroll = 0
  c.meta.msl_weights = ()

  c.train = ml_collections.ConfigDict()
  c.train.seed = 0
  c.train.num_steps = 1500
  # Length of the lr schedule; 0 = num_steps (on resume: the run's own).
  c.train.schedule_steps = 0
  c.train.tasks_per_step = 64
  c.train.chunk_tasks = 0  # tasks per device per chunk; 0 = auto
  c.train.lr = 2e-3
  c.train.warmup_steps = 100
  c.train.end_lr_factor = 0.05
  c.train.grad_clip = 1.0
  c.train.eval_every_steps = 250
  # validations without a better validation MAE that stop the run; the
  # best validated checkpoint is kept and used by eval and export
  c.train.early_stop_patience = 3
  c.train.max_nonfinite = 10  # consecutive skipped updates that stop the run
  c.train.preempt_exit_code = 0  # exit status after SIGTERM/SIGINT + save
  c.train.prefetch = 2
  c.train.cpu_devices = 0  # CPU only: fake devices; 0 = one per core

  c.mesh = ml_collections.ConfigDict()
  # devices that split the large embedding tables by rows (with their
  # optimizer state); the other devices split the tasks. 1 = replicated
  c.mesh.model = 1
  c.mesh.shard_min_rows = 65536  # smaller tables stay replicated

  c.eval = ml_collections.ConfigDict()
  c.eval.seed = 0
  c.eval.new_user_fraction = 0.2
  c.eval.val_fraction = 0.1
  c.eval.min_ratings = 13
  c.eval.max_ratings = 100
  c.eval.max_tasks = 1000  # per scenario; 0 = all
  c.eval.batch_tasks = 128
  c.eval.catalog_block = 1024  # implicit: items scored at once per user

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 3

  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 100
  c.log.histogram_every_steps = 500  # 0 = no histograms
  return c
