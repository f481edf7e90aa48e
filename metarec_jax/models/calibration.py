"""What a rating model serves (`model.calibration`): the median map.

Training fits the mean of a rating; the absolute error that the protocol
scores is lowest at the median, and on a few discrete rating values the two
differ. With `model.calibration=median` a rating model's parameters hold a
monotone map, the identity until a validation fits it
(`train.median_map`), and `Recommender.predict` serves

    prediction + interp(prediction, median_knots, median_offsets[kind])

with `kind` 0 for items with training ratings and 1 for items without
(`median_kind`, where the model reads item IDs; otherwise row 0 for every
item). The losses, the inner loop and the meta-gradient use the
prediction itself: the map takes no gradient and is not read by any loss.
All three are parameters so that checkpoints and exports carry them.

Parameters (top level of the model's parameters, beside the module's):

    median_knots    [KNOTS]      on the rating scale once fitted
    median_offsets  [2, KNOTS]   per kind of item; zero: the identity
    median_kind     [items + 1]  1: the item ID has training ratings (row
                                 0, padding: 0); fixed at initialisation
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MEDIAN_KNOTS = "median_knots"
MEDIAN_OFFSETS = "median_offsets"
MEDIAN_KIND = "median_kind"
KNOTS = 41  # 0.1 apart on a 1-5 scale
CALIBRATIONS = ("median", "none")  # `model.calibration`
# The knots of the identity (any increasing values): one float32 array for
# a fresh model and a resumed run alike, so both hold the same bits.
IDENTITY_KNOTS = np.linspace(0.0, 1.0, KNOTS).astype(np.float32)


def identity(existing: np.ndarray | None) -> dict[str, jax.Array]:
  """The map's parameters as initialised: the identity, and with
  `existing` (per item ID: has training ratings) the kind table."""
  params = {MEDIAN_KNOTS: jnp.asarray(IDENTITY_KNOTS),
            MEDIAN_OFFSETS: jnp.zeros((2, KNOTS), jnp.float32)}
  if existing is not None:
    params[MEDIAN_KIND] = jnp.asarray(existing, jnp.float32)
  return params


def serve(params, prediction: jax.Array,
          item_ids: jax.Array | None) -> jax.Array:
  """`prediction` through the map of `params`: row 0 of the offsets for
  items with training ratings (every item where `params` has no kind
  table or `item_ids` is None), row 1 for the others."""
  at = jax.lax.stop_gradient(params[MEDIAN_KNOTS])
  offsets = jax.lax.stop_gradient(params[MEDIAN_OFFSETS])
  shift = jnp.interp(prediction, at, offsets[0])
  if MEDIAN_KIND in params and item_ids is not None:
    existing = jax.lax.stop_gradient(params[MEDIAN_KIND])[item_ids] > 0.5
    shift = jnp.where(existing, shift, jnp.interp(prediction, at, offsets[1]))
  return prediction + shift.astype(prediction.dtype)


def per_kind(params) -> bool:
  """Whether `params` serve each kind of item its own row of the map."""
  return MEDIAN_KIND in params
