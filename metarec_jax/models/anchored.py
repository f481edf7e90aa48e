"""MeLU anchored on the item-mean + user-bias baseline (`model.anchor`).

`Anchor` holds what every anchored model shares (the biases, the baseline,
the shares: everything below but the decision MLP); `AnchoredMeLU` puts
MeLU's decision MLP on it, `anchored_idemb.AnchoredIDEmb` IDEmb's user and
item vectors.

The cheap signal is where the model starts, not something it must find:

    rating = global + item_bias(i) + user_bias + decision(embeddings)

- `global` starts at the training mean rating;
- `item_bias(i)` is the item's mean residual over its n training ratings
  shrunk, as the baseline's item means are (`eval.baselines`, 5
  pseudo-ratings), towards a bias predicted from the item's features
  instead of towards 0: `w * mean + (1 - w) * predicted`, `w = n / (n +
  5)`. The means and weights are fixed tables computed from the training
  ratings (the closed-form fit, which gradient steps on a few hundred
  users would only overfit); the feature predictor is learned, and is all
  a new item has (`n = 0`; `data.item_id_dropout` hides the ID of a share
  of training rows so that it learns from existing items);
- `user_bias` is adapted by the inner loop with a prior: the support loss
  is `(sum of squared errors + prior * user_bias^2) / (n + prior)`, and the
  parameter is scaled so that one inner SGD step of `meta.inner_lr` on it
  alone lands exactly on the shrunk mean residual, `sum(r - pred) /
  (n + prior)`, from any start. The prior starts at the baseline's 3
  pseudo-ratings (`model.user_bias_prior`) and is meta-learned
  (`user_prior`, its log): its meta-gradient flows through the adapted
  bias to the query loss, so training sets the shrinkage the data calls
  for. The bias's own meta-value is `meta_fixed` at 0, so that the
  meta-parameters alone predict the item means: left free, Adam moved it
  (its landing hardly depends on its start, so what meta-gradient it has
  is small and noisy) and the unadapted model drifted above the global
  mean on MovieLens-1M;
- `decision` is MeLU's decision MLP (adapted per user, as in MeLU) over
  the feature embeddings, with its output layer started at zero (times a
  meta-learned `gate`, started at 1): the network adds only the
  interaction on top of the anchor, and only as far as meta-training finds
  that it helps the query ratings. Not a gate started at 0: the inner
  loop's move of a gated network's prediction scales with the square of
  the gate, so personalisation started at nothing and stayed weak (the
  gate had reached 0.23 after 1500 steps on MovieLens-1M, 5% of an
  ungated step). With a zero output layer the first inner step already
  fits, per user, a linear map of the last hidden layer. (The gate is
  redundant with the output layer now; it stays so that checkpoints and
  exports of the earlier form keep their parameters and meaning.)

That is the *model*. The baseline is there too, exactly: the training mean
+ the closed-form item bias + `base_bias`, a second adapted user bias that
lands on the baseline's own shrunk mean residual (3 pseudo-ratings,
squared error, residuals of the baseline's own predictions). What is
served is

    share * model + (1 - share) * baseline

with one `share` for items with training ratings and one for items without
(new items, or an ID the store does not know). It takes no gradient:
training runs with 1 (the baseline part is then unused, and its bias gets
no meta-gradient), and each validation fits it on the validation users'
held-out ratings (`train.shares`), so that where what training learned
only fits the training users (small data, or features that identify
existing items but say nothing about new ones) the served model falls
back towards the baseline, for each kind of item on its own evidence, down
to exactly the baseline at 0.

A user without a support rating that counts is served the meta-parameters
alone (a new visitor, an export row without ratings), mixed by their own
validated `cold_share` (`model.cold_share=validated`): MAML trains the
meta-parameters as a start for adaptation, not as predictions, and where
adaptation resets a level anyway the meta-parameters' level drifts
(MovieLens-1M's ratings alone with `model.id_init=svd`: the unadapted
predictions 0.64 below the ratings on average, W MAE 1.014 against the
global mean's 0.954). `warm`, an adapted scalar at 0 in the
meta-parameters that any counted support rating moves
(`anchored_loss`), says which shares a prediction takes; each validation
fits the cold ones to the validation users' predictions before
adaptation (`train.shares`).

A support rating of a new item weighs `1 / new_item_prior` of an existing
item's in both user biases' shrunk means (`Anchor.support_weights`;
`model.new_item_prior=validated`, each validation fits the multiple,
`train.new_item_prior`): its residual also holds the item's unknown bias,
so one or two such ratings said too much about the user. Training uses 1.
Where even down-weighted they mislead (a user's first one or two ratings of
items whose features say nothing), `new_item_min_support`
(`model.new_item_min_support=validated`, `train.new_item_prior` fits it
too) is the fewest support ratings of new items that count at all: a
support set with fewer of them keeps the meta-parameters' user biases, as
if the user had not rated them. Likewise `warm_min_support`
(`model.warm_min_support=validated`) for all of a user's ratings: below it
the user is served as one without ratings (`train.min_support`).
Training uses 1 for both (every rating counts).

Before any training the meta-parameters alone predict the item means
(never worse than the global mean), and served at share 0 (and the
multiple 1) the model is exactly the baseline. Adapted at share 1 it is
the baseline plus what the inner loop fits through the network's output
layer, which may or may not help: the start is validated with its own
shares like every later step (`train.loop`).

Parameters:

    embed/<field>/embedding          MeLU's feature embeddings
    decision/fc<k>/{kernel,bias}, decision/out/{kernel,bias}
    gate                             []   (starts at 1)
    share                            [2]  (1, 1; validated, no gradient)
    item_bias/embedding              [items + 1, 2] (fixed: w * mean, w)
    item_features/<field>/embedding  [vocab, ITEM_DIM] (item fields only)
    item_project/kernel              [item fields * ITEM_DIM, 1]
    global_bias                      []
    user_bias                        []   (adapted; meta-value fixed at 0)
    user_prior                       []   (log of the model's prior)
    base_bias                        []   (adapted; meta-value fixed at 0)
    new_item_prior                   []   (1; validated, no gradient; only
                                           with model.new_item_prior=validated)
    new_item_min_support             []   (1; validated, no gradient; only
                                           with model.new_item_min_support=
                                           validated)
    warm_min_support                 []   (1; validated, no gradient; only
                                           with model.warm_min_support=
                                           validated)
    cold_share                       [2]  (1, 1; validated, no gradient; only
                                           with model.cold_share=validated)
    warm                             []   (adapted; meta-value fixed at 0;
                                           likewise)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarec_jax.data.schema import ITEM_ID, FeatureSpec
from metarec_jax.meta import LinearHead
from metarec_jax.models.anchored_loss import (BASE_BIAS, USER_BIAS, USER_PRIOR,
                                              WARM, adapted_scalars,
                                              bookkeeping, support_loss,
                                              support_rows)
from metarec_jax.models.cold_blend import NEW_ITEM_MIN_SUPPORT, WARM_MIN_SUPPORT
from metarec_jax.models.melu import Decision, Embedder
from metarec_jax.models.recommender import Recommender, masked_loss

ITEM_DIM = 8  # width of the item-feature embeddings of the item bias

SHARE = "share"  # [existing items, new items]
# The shares served to a user without a support rating (`warm` at 0).
COLD_SHARE = "cold_share"  # [existing items, new items]
COLD_SHARES = ("validated", "same")  # `model.cold_share`
# The prior's multiple for support ratings of new items (validated).
NEW_ITEM_PRIOR = "new_item_prior"
NEW_ITEM_PRIORS = ("validated", "same")  # `model.new_item_prior`
# The fewest support ratings of new items that move the user biases (its
# parameter is `cold_blend.NEW_ITEM_MIN_SUPPORT`, which plain models hold
# too).
NEW_ITEM_MIN_SUPPORTS = ("validated", "none")  # `model.new_item_min_support`
# The fewest support ratings that count at all (validated; its parameter is
# `cold_blend.WARM_MIN_SUPPORT`, which plain models hold too).
WARM_MIN_SUPPORTS = ("validated", "none")  # `model.warm_min_support`


class Anchor(nn.Module):
  """The anchor and the baseline of an anchored model (`parts`), under the
  learned interaction of a subclass, which calls `setup_anchor` in its
  `setup` (the parameters stay at the top level of the tree).

  Attributes:
    item_fields: item-side fields the item bias is predicted from.
    num_items: vocabulary of `item_id` (items + 1).
    item_bias_init: initializer of `item_bias/embedding` `[items + 1, 2]`:
      per item `w * mean residual` and `w` (row 0, padding: 0 and 0).
    global_mean: the start of `global_bias`.
    user_scale: see `anchored_loss.user_bias_scale`.
    prior: the start of the model's user-bias prior (pseudo-ratings).
    new_item_prior: whether the parameters hold `new_item_prior`, the
      validated multiple of the user biases' priors for support ratings of
      new items (`support_weights`).
    new_item_min_support: whether the parameters hold
      `new_item_min_support`, the validated fewest support ratings of new
      items that move the user biases (`support_weights`).
    warm_min_support: whether the parameters hold `warm_min_support`, the
      validated fewest support ratings that count at all.
    cold_share: whether the parameters hold `cold_share`, the validated
      shares of a user without support ratings, and `warm`, which tells
      such a user (0) from an adapted one (`model.cold_share=validated`).
  """

  item_fields: tuple[FeatureSpec, ...] = ()
  num_items: int = 1
  item_bias_init: Callable = nn.initializers.zeros
  global_mean: float = 0.0
  user_scale: float = 1.0
  prior: float = 3.0
  new_item_prior: bool = False
  new_item_min_support: bool = False
  warm_min_support: bool = False
  cold_share: bool = False

  def setup_anchor(self):
    """Creates the anchor's and the baseline's parameters."""
    self.item_bias = nn.Embed(self.num_items, 2,
                              embedding_init=self.item_bias_init)
    if self.item_fields:
      self.item_features = Embedder(tuple(self.item_fields), ITEM_DIM, 0.1)
      self.item_project = nn.Dense(1, use_bias=False,
                                   kernel_init=nn.initializers.zeros)
    self.global_bias = self.param(
        "global_bias", nn.initializers.constant(self.global_mean), ())
    self.user_bias = self.param(USER_BIAS, nn.initializers.zeros, ())
    self.base_bias = self.param(BASE_BIAS, nn.initializers.zeros, ())
    self.user_prior = self.param(
        USER_PRIOR, nn.initializers.constant(math.log(max(self.prior, 1e-3))),
        ())
    self.share = self.param(SHARE, nn.initializers.ones, (2,))
    if self.cold_share:
      self.cold = self.param(COLD_SHARE, nn.initializers.ones, (2,))
      self.warm = self.param(WARM, nn.initializers.zeros, ())
    if self.new_item_prior:
      self.new_prior = self.param(NEW_ITEM_PRIOR, nn.initializers.ones, ())
    if self.new_item_min_support:
      self.min_support = self.param(NEW_ITEM_MIN_SUPPORT,
                                    nn.initializers.ones, ())
    if self.warm_min_support:
      self.warm_least = self.param(WARM_MIN_SUPPORT, nn.initializers.ones, ())

  def item_table(self, features: dict[str, jax.Array]):
    """Each row's fixed item-bias entries `(w * mean residual, w)`: the
    training ratings' closed-form fit, `w > 0` for an item with training
    ratings (row 0, padding or a hidden ID: 0 and 0, the features
    alone)."""
    table = jax.lax.stop_gradient(self.item_bias(features[ITEM_ID]))
    return table[..., 0], table[..., 1]

  def support_weights(self, features: dict[str, jax.Array],
                      mask: jax.Array | None = None) -> jax.Array:
    """Each support row's weight in the user biases' estimates: 1 for an
    item with training ratings, `1 / new_item_prior` for one without, and
    0 for one without where the task's support set (`mask`, one task's
    rows) holds fewer than `new_item_min_support` of them; and 0 for
    every row where fewer than `warm_min_support` rows are left above 0
    (the user is then served as one without ratings).

    A new item's residual holds its unknown item bias (what its features
    do not predict) besides the noise, so its rating says less about the
    user: down-weighted, a support set of new items alone is shrunk by
    `new_item_prior` times the prior. Where one or two such ratings
    mislead even so, the validated minimum leaves them out. Both are
    validated (1 in training; no gradient).
    """
    existing = self.item_table(features)[1] > 0
    new_weight = jnp.ones((), jnp.float32)
    if self.new_item_prior:
      new_weight = 1.0 / jnp.maximum(
          jax.lax.stop_gradient(self.new_prior), 1.0)
    # Counts are whole numbers: half a rating of slack for the float.
    if self.new_item_min_support and mask is not None:
      new_rows = jnp.sum(jnp.where(existing, 0.0, mask.astype(jnp.float32)))
      least = jax.lax.stop_gradient(self.min_support)
      new_weight = jnp.where(new_rows >= least - 0.5, new_weight, 0.0)
    weights = jnp.where(existing, 1.0, new_weight)
    if self.warm_min_support and mask is not None:
      counted = jnp.sum(jnp.where(weights > 0, mask.astype(jnp.float32), 0.0))
      least = jax.lax.stop_gradient(self.warm_least)
      weights = jnp.where(counted >= least - 0.5, weights, 0.0)
    return weights

  def combine(self, interaction: jax.Array,
              features: dict[str, jax.Array]) -> jax.Array:
    """`share * model + (1 - share) * baseline` (see `parts`)."""
    model, baseline, share = self.parts(interaction, features)
    return share * model + (1.0 - share) * baseline

  def parts(self, interaction: jax.Array, features: dict[str, jax.Array]):
    """The trained model's prediction, the baseline's and each row's share.

    model: global + item bias + `user_bias` + the learned part (the
      `interaction`, the features' item bias, the move of the global level).
    baseline: the training mean + the closed-form item bias + `base_bias`
      (adapted with the baseline's own prior): the baseline exactly.
    share: the validated share of the row's kind of item (no gradient),
      the cold one where the user has no support rating (`warm` at 0).
    """
    item, weight = self.item_table(features)
    anchor = self.global_mean + item
    learned = interaction + (self.global_bias - self.global_mean)
    if self.item_fields:
      predicted = self.item_project(self.item_features(features))[..., 0]
      learned = learned + (1.0 - weight) * predicted
    share = jnp.where(weight > 0, self.share[0], self.share[1])
    if self.cold_share:  # a user without support ratings: `warm` is 0
      share = jnp.where(self.warm != 0, share,
                        jnp.where(weight > 0, self.cold[0], self.cold[1]))
    share = jax.lax.stop_gradient(share)
    model = anchor + self.user_scale * self.user_bias + learned
    baseline = anchor + self.user_scale * self.base_bias
    return model, baseline, share


class AnchoredMeLU(Anchor):
  """`prediction = apply(params, features)`, ratings `f32[...]`: the anchor
  (`Anchor`) plus MeLU's gated decision MLP over the feature embeddings.

  Attributes (besides `Anchor`'s):
    fields: the feature fields of the decision MLP's embeddings.
    embed_starts: `(field, initializer)` of the embedding tables that do
      not start at random (`Embedder.starts`).
  """

  fields: tuple[FeatureSpec, ...] = ()
  embed_dim: int = 32
  hidden: Sequence[int] = (64, 64)
  embed_std: float = 1.0
  embed_starts: tuple[tuple[str, Callable], ...] = ()

  def setup(self):
    self.embed = Embedder(tuple(self.fields), self.embed_dim, self.embed_std,
                          self.embed_starts)
    # A zero output layer: the network adds nothing at the start, yet the
    # inner loop moves predictions at full strength (see the docstring).
    self.decision = Decision(tuple(self.hidden), zero_output=True)
    self.gate = self.param("gate", nn.initializers.ones, ())
    self.setup_anchor()

  def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
    return self.combine(self.gated(self.embed(features)), features)

  def gated(self, x: jax.Array, first_layer: bool = True) -> jax.Array:
    """The gated decision MLP of `x` (fc1's pre-activation where
    `first_layer` is False): the interaction this model adds."""
    return self.gate * self.decision(x, first_layer=first_layer)

  def featurize(self, features: dict[str, jax.Array]) -> jax.Array:
    """The decision MLP's input `X: f32[..., fields * embed_dim]`."""
    return self.embed(features)

  def from_preactivation(self, a: jax.Array,
                         features: dict[str, jax.Array]) -> jax.Array:
    """Predictions from fc1's pre-activation `a = X @ W1 + b1`."""
    return self.combine(self.gated(a, first_layer=False), features)

  def parts_from_preactivation(self, a: jax.Array,
                               features: dict[str, jax.Array]):
    """`(model, baseline, share)` from fc1's pre-activation (`parts`)."""
    return self.parts(self.gated(a, first_layer=False), features)


def recommender(module: AnchoredMeLU, example_features, *, kind: str,
                delta: float, query_kind: str | None = None,
                rank_weight: float = 0.0,
                support_rank_weight: float = 0.0) -> Recommender:
  """The `Recommender` of an `AnchoredMeLU`: a `LinearHead` whose support
  loss has the user-bias prior (and `support_rank_weight`'s listwise term,
  see `support_loss`) and whose query loss is the plain masked loss
  (`masked_loss` with `rank_weight`; same features and first layer, so
  the dual form applies).

  The support loss is the sum of two independent quadratics (the model's,
  with the learned prior, and the baseline's), so one step sets both user
  biases; both are `meta_fixed` (see the module docstring), and so is
  `warm`, which any counted support rating moves (`adapted_scalars`)."""

  def featurize(params, batch):
    return module.apply({"params": params}, batch["features"],
                        method="featurize")

  weights = support_rows(module)

  def head(loss_kind, with_prior):
    def fn(params, a, batch):
      if not with_prior:
        pred = module.apply({"params": params}, a, batch["features"],
                            method="from_preactivation")
        return masked_loss(pred, batch, loss_kind, delta, rank_weight)
      model, baseline, _ = module.apply(
          {"params": params}, a, batch["features"],
          method="parts_from_preactivation")
      rows = weights(params, batch)
      return support_loss(params, model, baseline, batch,
                          scale=module.user_scale, kind=loss_kind,
                          delta=delta, rows=rows,
                          rank_weight=support_rank_weight)
    return fn

  support = LinearHead(featurize=featurize, head=head(kind, True),
                       kernel="decision/fc1/kernel", bias="decision/fc1/bias",
                       featurize_reads=("^embed/",))
  query = dataclasses.replace(support, head=head(query_kind or kind, False))
  return Recommender(name="melu", module=module, loss_fn=support,
                     adapt=("^decision/",) + adapted_scalars(module.cold_share),
                     meta_fixed=adapted_scalars(module.cold_share),
                     always_adapt=bookkeeping(module.cold_share),
                     example_features=example_features, query_loss_fn=query,
                     support_weights=weights)
