"""Models: flax modules wrapped as `Recommender`s, built by `model.name`."""

from metarec_jax.models.factory import (MODELS, PAD_FROM_MULTIPLES,
                                        blends_cold, build,
                                        example_features, feature_names,
                                        for_data, is_anchored, needs_item_id,
                                        table_rows)
from metarec_jax.models.idemb import IDEmb
from metarec_jax.models.melu import MeLU
from metarec_jax.models.recommender import (RANKING_LOSSES, Recommender,
                                            masked_loss, plain_loss)

__all__ = ["IDEmb", "MODELS", "MeLU", "PAD_FROM_MULTIPLES", "RANKING_LOSSES",
           "Recommender", "blends_cold", "build", "example_features", "feature_names",
           "for_data", "is_anchored", "masked_loss", "needs_item_id",
           "plain_loss", "table_rows"]
