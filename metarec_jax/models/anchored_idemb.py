"""IDEmb anchored on the item-mean + user-bias baseline (`model.anchor`).

The same anchor and baseline as the anchored MeLU (`models/anchored.py`):

    rating = global + item_bias(i) + user_bias + <u, v_i>     (dot)
    rating = global + item_bias(i) + user_bias + MLP([u, v_i]) (mlp)

served as `share * model + (1 - share) * baseline`, with the item bias the
fixed shrunk item means (predicted from item features for new items), the
user bias adapted with a meta-learned prior, and the baseline's own user
bias beside it. What is learned is IDEmb's interaction only: one
meta-learned initial user vector `u` (adapted per user, as in IDEmb) and
item vectors `v_i` from the item's ID (plus a projection of its feature
embeddings, `model.item_features`). Every item vector starts at zero (the
ID table and the projection), and the `mlp`'s output layer too, so before
training the model is the anchor exactly; IDEmb's own learned item and
user biases are not there: the anchor's take their place.

Parameters (besides the anchor's, see `models/anchored.py`):

    user/embedding                    [dim]   (adapted)
    item/id/embedding                 [items + 1, dim]
    item/features/<field>/embedding   [vocab, dim]        (item features)
    item/project/kernel, bias         [fields * dim, dim] (item features)
    mlp/fc<k>/..., mlp/out/...                            (mlp)

The default `meta.adapt` is the user vector and the two user biases.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from metarec_jax.data.schema import FeatureSpec
from metarec_jax.models.anchored import Anchor
from metarec_jax.models.anchored_loss import (adapted_scalars, bookkeeping,
                                              support_loss, support_rows)
from metarec_jax.models.idemb import Item, User
from metarec_jax.models.melu import Decision
from metarec_jax.models.recommender import Recommender, masked_loss


class AnchoredIDEmb(Anchor):
  """`prediction = apply(params, features)`, ratings `f32[...]`.

  Attributes (besides `Anchor`'s):
    vector_fields: item fields projected into the item vectors.
    embed_dim: width of the user and item vectors.
    interaction: `dot` or `mlp`.
    hidden: the `mlp`'s hidden widths.
  """

  vector_fields: tuple[FeatureSpec, ...] = ()
  embed_dim: int = 32
  interaction: str = "dot"
  hidden: Sequence[int] = (64,)

  def setup(self):
    self.user = User(self.embed_dim, with_bias=False)
    self.item = Item(self.num_items, self.embed_dim,
                     tuple(self.vector_fields), with_bias=False,
                     zero_start=True)
    if self.interaction == "mlp":
      self.mlp = Decision(tuple(self.hidden), zero_output=True)
    self.setup_anchor()

  def learned(self, features: dict[str, jax.Array]) -> jax.Array:
    """The interaction of the user vector with each row's item vector."""
    u, _ = self.user()
    v, _ = self.item(features)
    if self.interaction == "dot":
      return jnp.sum(u * v, axis=-1)
    return self.mlp(jnp.concatenate([jnp.broadcast_to(u, v.shape), v], -1))

  def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
    return self.combine(self.learned(features), features)

  def parts_of(self, features: dict[str, jax.Array]):
    """`(model, baseline, share)` of each row (`Anchor.parts`)."""
    return self.parts(self.learned(features), features)


def recommender(module: AnchoredIDEmb, example_features, *, kind: str,
                delta: float, query_kind: str | None = None,
                rank_weight: float = 0.0,
                support_rank_weight: float = 0.0) -> Recommender:
  """The `Recommender` of an `AnchoredIDEmb`: the support loss has the
  user-bias priors (`anchored_loss.support_loss`, with `support_rank_weight`),
  the query loss is the plain masked loss (with `rank_weight`, see
  `masked_loss`)."""

  weights = support_rows(module)

  def support(params, batch):
    model, baseline, _ = module.apply({"params": params}, batch["features"],
                                      method="parts_of")
    rows = weights(params, batch)
    return support_loss(params, model, baseline, batch,
                        scale=module.user_scale, kind=kind, delta=delta,
                        rows=rows, rank_weight=support_rank_weight)

  def query(params, batch):
    return masked_loss(module.apply({"params": params}, batch["features"]),
                       batch, query_kind or kind, delta, rank_weight)

  # No `rows`: the encoding algorithms would modulate the baseline's own
  # user bias too (as with the anchored MeLU, `experiment.build` refuses).
  return Recommender(name="idemb", module=module, loss_fn=support,
                     adapt=("^user/",) + adapted_scalars(module.cold_share),
                     meta_fixed=adapted_scalars(module.cold_share),
                     always_adapt=bookkeeping(module.cold_share),
                     example_features=example_features, query_loss_fn=query,
                     support_weights=weights)
