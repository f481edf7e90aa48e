"""Model-free baselines computed on the very same tasks as the model.

- `global_mean`: the mean training rating for every query item.
- `item_mean_user_bias`: item means from the training ratings, shrunk
  towards the global mean with 5 pseudo-ratings, plus the user's bias: the
  mean residual on the task's support set, shrunk with 3 pseudo-ratings;
  clipped to the rating scale where scored (nDCG ranks it unclipped, as
  it does the model's predictions: `eval.metrics.summary`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from metarec_jax.data.splits import Split
from metarec_jax.data.store import TaskStore

ITEM_PSEUDO = 5.0
USER_PSEUDO = 3.0


# `model.global_mean`: which ratings the model's starting level averages.
GLOBAL_MEANS = ("training", "all")


def training_mean(store: TaskStore, split: Split) -> float:
  """The mean of the training users' ratings, the baseline's global mean
  (`BaselineStats.global_mean`), of the finite ones: a corrupt rating
  (NaN) must not make the model's starting level NaN, and with no finite
  training rating, the store's mean of every rating."""
  ratings = np.asarray(store.ratings, np.float64)[split.train_positions]
  ratings = ratings[np.isfinite(ratings)]
  return float(ratings.mean()) if len(ratings) else float(
      store.manifest["rating_mean"])


@dataclasses.dataclass
class BaselineStats:
  """The model-free baselines' statistics of a split's training ratings:
  the global mean, each item's shrunk mean and the rating range."""

  global_mean: float
  item_mean: np.ndarray  # float64 [I], shrunk
  rating_range: tuple[float, float]

  @classmethod
  def from_split(cls, store: TaskStore, split: Split) -> "BaselineStats":
    """The statistics of `split`'s training ratings in `store`."""
    pos = split.train_positions
    items = np.asarray(store.items)[pos]
    ratings = np.asarray(store.ratings, np.float64)[pos]
    mu = training_mean(store, split)
    sums = np.bincount(items, weights=ratings, minlength=store.num_items)
    counts = np.bincount(items, minlength=store.num_items)
    item_mean = (sums + ITEM_PSEUDO * mu) / (counts + ITEM_PSEUDO)
    return cls(mu, item_mean, store.rating_range)

  def predict(self, support_items, support_ratings, support_mask,
              query_items, *, clip: bool = True) -> dict[str, np.ndarray]:
    """Predictions of both baselines for `[N, Q]` query items (`clip`:
    clipped to the rating scale, as scored; else as ranked)."""
    lo, hi = self.rating_range if clip else (-np.inf, np.inf)
    resid = np.where(support_mask,
                     support_ratings - self.item_mean[support_items], 0.0)
    bias = resid.sum(-1) / (support_mask.sum(-1) + USER_PSEUDO)
    return {
        "global_mean": np.full(query_items.shape, self.global_mean),
        "item_mean_user_bias": np.clip(
            self.item_mean[query_items] + bias[:, None], lo, hi),
    }
