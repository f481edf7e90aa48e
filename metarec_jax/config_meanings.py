"""The meaning of every config key: one sentence or a few, per key.

`MEANINGS` is the one place a key's meaning is written (its default is in
`config_defaults`, its allowed values in `config_reference.ALLOWED`). The
README's "Config reference" table is generated from the three
(`config_table`), and TensorBoard shows these texts as the HParams
tooltips.

A dict beside the code, not parsed comments in the defaults: the defaults
stay plain Python any variant can import; a test checks the key set.
"""

MEANINGS: dict[str, str] = {
    # model
    "model.name": "Model family: `melu` (feature embeddings + decision MLP)"
                  " or `idemb` (item ID embeddings and one meta-learned user"
                  " embedding).",
    "model.interaction": "`idemb` only: `dot` (user . item + biases) or `mlp`"
                         " (an MLP of `model.hidden` on both embeddings).",
    "model.item_features": "`idemb` only: add the item's feature embeddings"
                           " to its ID embedding (new items not blind).",
    "model.features": "Feature fields the model reads (names of the data's"
                      " schema); `()` = all of them.",
    "model.exclude_features": "Feature fields left out of `model.features`"
                              " (e.g. a near-unique `zip`).",
    "model.embed_dim": "Width of every feature embedding.",
    "model.loss": "Loss of the inner and the outer loop: `mse` or"
                  " `huber` (quadratic within `huber_delta`, linear beyond:"
                  " predictions nearer the median, which MAE rewards) for"
                  " ratings; `bce` (binary cross-entropy), `bpr` (pairwise,"
                  " each negative of the set against one positive, the"
                  " positives taken in turn: sampled triples) or"
                  " `softmax` (sampled softmax: each positive against the"
                  " set's negatives) for implicit feedback.",
    "model.query_loss": "Loss of the query sets, the meta-objective (one of"
                        " `model.loss`'s); `\"\"` = `model.loss`. `huber`"
                        " here with `mse` inside adapts by least squares but"
                        " meta-learns for MAE.",
    "model.huber_delta": "`model.loss=huber`: where the loss turns from"
                         " quadratic to linear.",
    "model.query_rank_weight": "Rating losses: the query loss adds this"
                               " multiple of a listwise ranking term"
                               " (ListNet against nDCG's gains 2^r - 1,"
                               " `models.recommender.listwise_loss`): the"
                               " meta-objective then also orders each"
                               " user's items; 0 = none.",
    "model.support_rank_weight": "Rating losses: the support loss (what"
                                 " the inner loop adapts a user on) adds"
                                 " this multiple of the same listwise"
                                 " term, so adaptation also orders the"
                                 " user's items; it never moves a user"
                                 " bias (a shift leaves it unchanged);"
                                 " 0 = none.",
    "model.embed_std": "`melu`: standard deviation of the initial feature"
                       " embeddings (the paper's PyTorch default is 1).",
    "model.item_id": "`melu`: also embed each item's ID (zero-initialised,"
                     " so items unseen in training add nothing); lets the"
                     " model learn item-specific quality.",
    "model.id_init": "The anchored `melu` (model.anchor) on ratings: where"
                     " the `item_key` table (the item ids as features: a"
                     " ratings file alone, or data.generic.id_features)"
                     " starts. `svd`: each item's factors in a truncated"
                     " SVD of the training ratings' residuals after the"
                     " baseline, shrunk by its number of training ratings"
                     " (`data/factors.py`; random rows where the ratings"
                     " hold nothing to factor or the SVD does not"
                     " converge); `normal`: at random, N(0,"
                     " model.embed_std^2), as the other tables (what a"
                     " config written before this key meant). A resumed"
                     " run keeps its own.",
    "model.anchor": "`melu` and `idemb`: start from the item-mean +"
                    " user-bias baseline: rating = global + item bias"
                    " (started at the shrunk item means, predicted from"
                    " item features for new items) + user bias (adapted,"
                    " shrunk with a meta-learned prior) + the model's"
                    " interaction (MeLU's decision MLP, IDEmb's user and"
                    " item vectors; zero at first), which learns only what"
                    " the biases miss; served as share * model + (1 -"
                    " share) * baseline, the shares fitted on the"
                    " validation users per kind of item"
                    " (`models/anchored.py`, `models/anchored_idemb.py`).",
    "model.anchor_version": "Which models `model.anchor` applies to: 2,"
                            " `melu` and `idemb`; 1, `melu` only (what a"
                            " config written before this key existed"
                            " meant, so that an `idemb` trained then keeps"
                            " its parameters).",
    "model.global_mean": "The rating the model starts from (its output"
                         " bias's start; the anchored models' level for an"
                         " item without training ratings): `training`, the"
                         " mean of the training users' ratings, as the"
                         " baseline's; `all`, of every rating, the held-out"
                         " users' included (what a config written before"
                         " this key existed meant). A resumed run keeps its"
                         " own value.",
    "model.calibration": "What a rating model (`mse` or `huber` losses)"
                         " serves (`models/calibration.py`). `median`: each"
                         " validation fits a strictly increasing map from"
                         " the prediction to the median of the validation"
                         " ratings there, served for existing and for new"
                         " items where it lowers their validation MAE by"
                         " the evidence, or, for a kind with few validation"
                         " tasks, lowers it at all while the pooled tasks"
                         " show the evidence (`train/median_map.py`): lower"
                         " MAE, higher RMSE, rankings unchanged. `none`: the"
                         " mean the losses fit (lower RMSE).",
    "model.user_bias_prior": "`model.anchor`: pseudo-ratings shrinking the"
                             " adapted user bias towards 0 at the start"
                             " (the baseline uses 3); meta-training learns"
                             " the value the data calls for.",
    "model.new_item_prior": "`model.anchor`: how much a support rating of"
                            " a new item (no training ratings) says about"
                            " the user. `validated`: each validation fits,"
                            " on the validation users' ratings of new"
                            " items, the multiple of both user biases'"
                            " priors (1, 2, 4, 8 or 16) for such ratings,"
                            " which carry the item's unknown bias besides"
                            " the noise (training uses 1;"
                            " `train/new_item_prior.py`). `same`: 1, as"
                            " for existing items (what a config written"
                            " before this key meant).",
    "model.new_item_min_support": "`model.anchor`: the fewest support"
                                  " ratings of new items that move a"
                                  " user's biases at all (a model with a"
                                  " cold blend that reads item IDs: that"
                                  " move the model). `validated`: each"
                                  " validation fits it (1, 2 or 3) on the"
                                  " validation users' ratings of new items"
                                  " cut to 1 and 2 of them: the first one"
                                  " or two count where, as served, they"
                                  " predict better than not adapting (on"
                                  " fewer than 50 tasks: evidently"
                                  " better; training uses 1). `none`:"
                                  " every rating counts (configs written"
                                  " before this key).",
    "model.warm_min_support": "`model.anchor`, or a model with a cold blend"
                              " (`model.cold_blend`): the fewest support"
                              " ratings that count at all; a user with"
                              " fewer is"
                              " served as one without ratings. `validated`:"
                              " each validation fits it (1, 2 or 3) on the"
                              " validation users' support sets cut to 1"
                              " and 2 ratings, as `new_item_min_support` is"
                              " fitted, except that on fewer than 50 tasks"
                              " they count unless evidently worse"
                              " (`train/min_support.py`; training uses 1)."
                              " `none`: every rating counts (configs"
                              " written before this key).",
    "model.cold_share": "`model.anchor`: what a user without support"
                        " ratings (the meta-parameters alone: a new"
                        " visitor) is served. `validated`: each validation"
                        " fits its own shares of the learned part"
                        " (`train/shares.py`) to the validation users'"
                        " predictions before adaptation, so the model"
                        " falls back towards the item means where the"
                        " meta-parameters predict worse (training uses"
                        " 1). `same`: the adapted users' shares (configs"
                        " written before this key).",
    "model.cold_blend": "A rating model without `model.anchor`, adapted by"
                        " gradient steps, of one member: what a user"
                        " without support ratings is served. `validated`:"
                        " the meta-parameters' predictions blended towards"
                        " the training mean rating, by a factor per kind"
                        " of item that each validation fits to the"
                        " validation users' predictions before adaptation"
                        " as served, through the median map where the"
                        " model has one (`train/cold_factors.py`), 0 (the"
                        " mean, through the map) unless a larger one is"
                        " evidently better"
                        " (training uses 1). `none`: the meta-parameters'"
                        " own predictions (configs written before this"
                        " key).",
    "model.popularity_prior": "Implicit feedback, `melu` with a ranking"
                              " loss (`bce`, `bpr`, `softmax`): the score"
                              " starts from each item's popularity (the"
                              " log of its smoothed share of the training"
                              " positives, fixed, times a meta-learned"
                              " weight that starts at 1) and the network"
                              " learns the rest; ignored otherwise. false:"
                              " the network alone (what a config written"
                              " before this key meant).",
    "model.compute_dtype": "Precision of the model's arithmetic in the inner"
                           " loop and the meta-gradient: `float32` or"
                           " `bfloat16` (mixed precision: parameters,"
                           " adapted leaves and optimizer state stay"
                           " float32, the losses reduce in float32;"
                           " `models/precision.py`). Predictions for eval,"
                           " export and serving use the float32"
                           " parameters.",
    "model.table_row_multiple": "Embedding tables of at least 64 times this"
                                " many rows (item IDs, large feature"
                                " vocabularies) get their rows rounded up"
                                " to a multiple of it (padding never looked"
                                " up, at most 1/64 more rows), so that any"
                                " `mesh.model` dividing it splits them"
                                " evenly. 1: no padding (what a config"
                                " written before this key meant).",
    "model.hidden": "Widths of the decision MLP's hidden layers (one output"
                    " unit follows).",
    "model.members": "`melu` (not anchored; maml, fomaml, reptile, mamlpp"
                     " or pretrain):"
                     " that many MeLUs (embeddings and decision MLP, each"
                     " initialised on its own) trained side by side on the"
                     " same tasks, each fitting and adapting on its own;"
                     " the prediction is their mean (an ensemble, at about"
                     " that multiple of the arithmetic). 1: one MeLU.",
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
    "data.min_support": "Training users need this many training ratings"
                        " beyond a training task's query ratings.",
    "data.query_size": "Query ratings per evaluation task, and per"
                       " training task unless `train_query_size`.",
    "data.train_query_size": "Query ratings per training task (`0`:"
                             " `query_size`).",
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
    "data.implicit.negatives": "Implicit: negatives per positive in support"
                               " and query sets (items the user never had,"
                               " but for a support its query's positives).",
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
    "data.generic.timestamp_col": "Generic data: timestamp column (numbers,"
                                  " or ISO 8601 dates or date-times) that"
                                  " orders each user's ratings; `\"\"` ="
                                  " none.",
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
    "data.generic.numeric": "Generic data: number columns (a price, a year),"
                            " each a category of the value's quantile bin.",
    "data.generic.numeric_bins": "Generic data: quantile bins of a `numeric`"
                                 " column (fewer if values repeat).",
    "data.generic.list_sep": "Generic data: a list column's separator.",
    "data.generic.missing": "Generic data: values that mean missing (0).",
    "data.generic.quoting": "Generic data: `auto` reads `\"`-quoted fields"
                            " (CSV); `none`: a `\"` is text.",
    "data.generic.new_item_col": "Generic data: item table column marking new"
                                 " items for the protocol; `\"\"` = none.",
    "data.generic.new_item_year": "Generic data: 0 = `new_item_col` is 0/1;"
                                  " else a year: the item is new if its year"
                                  " (or ISO date's year) is >= it.",
    "data.generic.id_features": "Generic data: the user and item ids as"
                                " categorical features too (`user_key`,"
                                " `item_key`; a ratings file alone: always).",
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
    "meta.inner_lr_scale": "`rating_width`: `meta.inner_lr` is the rate"
                           " for ratings 4 wide (1 to 5); on a wider scale"
                           " the inner loop runs at inner_lr x (4 /"
                           " (rating_max - rating_min))^2, so that its"
                           " steps move a prediction as far in stars (a 0"
                           " to 100 scale diverged at 0.1); on a narrower"
                           " one, and on implicit feedback, x 1 (raising"
                           " it diverged on 0/1). `none`: inner_lr as given (what"
                           " a config written before this key existed"
                           " meant). Exports record the rate run.",
    "meta.second_order": "Differentiate through the inner gradients (exact"
                         " MAML); false = first-order.",
    "meta.adapt": "Regular expressions of the parameter paths the inner"
                  " loop adapts; `()` = the model's default (MeLU: the"
                  " decision MLP, and with `model.anchor` the user"
                  " biases too).",
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
    "meta.encoder_hidden": "`amortised`, `hybrid`: width of the set"
                           " encoder's layers (`metric`: unused).",
    # distill
    "distill.teacher": "Work directory of a finished run (typically MAML)"
                       " whose adapted query predictions the student is"
                       " trained toward (`train/distill.py`); `{seed}` in"
                       " it becomes `train.seed`; `\"\"` = no"
                       " distillation. Rating runs only (not implicit).",
    "distill.weight": "`distill.teacher`: share of the teacher's"
                      " prediction in each query target (the rest is the"
                      " rating).",
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
                          " rate (`train` warns where they are half of the"
                          " schedule or more).",
    "train.end_lr_factor": "The cosine decay ends at `lr * end_lr_factor`.",
    "train.grad_clip": "Clip the meta-gradient to this global norm.",
    "train.unadapted_weight": "This multiple of the query loss of the"
                              " meta-parameters themselves (unadapted) is"
                              " added to the meta-objective's gradient:"
                              " adaptation resets a user's level, so"
                              " without it the meta-parameters' level"
                              " drifts and users with one or two ratings"
                              " start far from theirs (`train/step.py`;"
                              " with `meta.algorithm=reptile` it is added"
                              " to the update direction, with `pretrain`"
                              " it weighs the query loss more; fixed when"
                              " the step compiles). 0: the adapted query"
                              " loss alone (configs written before this"
                              " key).",
    "train.eval_every_steps": "Validation every this many steps (and at the"
                              " end; > 0: also of the start of a fresh"
                              " run, step 0, a candidate for the best"
                              " checkpoint like any other); 0 = only at"
                              " the end; -1 = never (no validation"
                              " programs are compiled).",
    "train.select_on": "What the validation MAE that selects checkpoints"
                       " (and counts for early stopping) measures:"
                       " `model`, the predictions before the median map"
                       " (the default); `served`, as served, through the"
                       " map where validation serves it (cross-fitted):"
                       " better on a 0/1 file whose start `model` kept,"
                       " worse on the test bed, where it picked earlier"
                       " checkpoints that serve new items worse (step 0 on"
                       " `bias`: IC MAE +17%; docs/results.md). Implicit"
                       " feedback: 1 - nDCG@10 either way. A resumed run"
                       " keeps its own.",
    "train.early_stop_patience": "Stop after this many validations"
                                 " without a better validation MAE than"
                                 " training's best so far (the start's does"
                                 " not count); 0 = never. Every validation"
                                 " that improves is saved as a checkpoint;"
                                 " `eval` and `export` use the best.",
    "train.max_nonfinite": "Stop after this many consecutive steps whose"
                           " loss, meta-gradient or update is not finite"
                           " (each one keeps the previous state).",
    "train.preempt_exit_code": "Exit status after a SIGTERM/SIGINT stopped"
                               " the run and saved it (0 = success; a"
                               " scheduler that requeues failed jobs wants"
                               " another).",
    "train.prefetch": "Batches the input threads prepare ahead.",
    "train.input_workers": "Threads that build training batches (each a"
                           " pure function of its step, handed over in"
                           " order); 0 = per backend (1 on CPU, 12 on"
                           " accelerators, at most one per host core;"
                           " `metarec_jax/backend.py`).",
    "train.cpu_devices": "CPU only: JAX devices to split the host into;"
                         " 0 = one per core (dividing `tasks_per_step`).",
    # mesh
    "mesh.model": "Devices on the mesh's `model` axis: each embedding table"
                  " of at least `mesh.shard_min_rows` rows (a multiple of"
                  " this, as `model.table_row_multiple` pads large tables"
                  " to) is split by rows over them, with its optimizer"
                  " state; the other devices split the tasks. 1 = every"
                  " parameter replicated. Must divide each process's"
                  " devices; the inner loop must not adapt a split table.",
    "mesh.shard_min_rows": "`mesh.model` > 1: embedding tables with fewer"
                           " rows stay replicated.",
    # eval
    "eval.seed": "Seed of the protocol split (user groups, query sets,"
                 " task subsampling) and of the support-curve cuts.",
    "eval.new_user_fraction": "Share of users held out as *new* (UC, UIC).",
    "eval.val_fraction": (
        "Share of existing users held out for validation; 0: the fewest"
        " that give 200 validation tasks, from 10% to 30% rounded to"
        " whole users (a small dataset's few dozen tasks are too noisy to"
        " choose checkpoints with; 5 of 16 users is 31%); a run writes the"
        " resolved share into its config.json."),
    "eval.min_ratings": "Fewest ratings of a user in an item class for a"
                        " task.",
    "eval.max_ratings": "Most ratings of a user in an item class for a task.",
    "eval.max_tasks": "Evaluation tasks per scenario at most; 0 = all.",
    "eval.batch_tasks": "Tasks adapted at once in evaluation.",
    "eval.catalog_block": "Implicit: items scored at once per user when"
                          " ranking the full catalog (bounds memory).",
    # checkpoint
    "checkpoint.every_steps": "Checkpoint every this many steps (0: none),"
                              " at the end, a new best and on any stop.",
    "checkpoint.keep": "Newest checkpoints kept.",
    # log
    "log.every_steps": "Log training metrics every this many steps.",
    "log.histogram_every_steps": "TensorBoard histograms of the parameters"
                                 " and learned inner rates every this many"
                                 " steps (and at the end); 0 = never.",
}
