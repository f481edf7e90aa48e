"""Item factors of the training ratings: where the ids' embeddings start.

With a ratings file alone, the model tells items apart by their ids only
(`item_key`). Started at random, an item's row moves only through the
meta-gradients of the training tasks that rate it; on catalogues of about a
hundred ratings an item the learned part then carried nothing to new users
within a training run (docs/results.md, "Item rows from the training
ratings"). The ratings hold that structure already: a truncated SVD of the
training ratings' residuals after the baseline (item means and user biases,
shrunk as `baselines` shrinks them) gives each item a direction in a taste
space, which the model starts from and goes on learning.
"""

from __future__ import annotations

import numpy as np

from metarec_jax.data.baselines import USER_PSEUDO, BaselineStats
from metarec_jax.data.splits import Split
from metarec_jax.data.store import TaskStore

# `model.id_init`: where the ids' embedding tables start.
ID_INITS = ("svd", "normal")

# An item's row has the full length only with many training ratings: `n`
# ratings give it `n / (n + SHRINK)` of it, so a direction read from a few
# ratings (mostly noise) weighs little, as the baseline shrinks an item's
# mean. Unnormalised, the rows of a long-tailed catalogue's most rated items
# were 150 times the median row, and the first meta-steps diverged.
SHRINK = 10.0
# The starting vector of the SVD's iteration: seeded, so that every call
# (each process of a joined run) starts from the same one.
SEED = 0


def item_factors(store: TaskStore, split: Split, dim: int,
                 scale: float = 1.0) -> np.ndarray | None:
  """`float32 [items, dim]`: each item's row of the rank-`dim` truncated
  SVD of `split`'s training residuals `r - item mean - user bias`, scaled
  by the square roots of the singular values, then set to the length
  `scale * sqrt(dim)` (that of a row of N(0, scale^2) entries) times
  `n / (n + SHRINK)`, `n` its training ratings. Items without training
  ratings get zeros; so do the columns past the rank the data allows
  (the users and items with training ratings, less one). None where the
  residuals hold nothing to factor (no two of them differ from zero, as
  with ratings all equal) or the SVD does not converge: the table then
  starts at random, as with `model.id_init=normal`."""
  pos = split.train_positions
  users = np.repeat(np.arange(store.num_users), split.train_counts())
  items = np.asarray(store.items)[pos]
  ratings = np.asarray(store.ratings, np.float64)[pos]
  keep = np.isfinite(ratings)
  users, items, ratings = users[keep], items[keep], ratings[keep]
  resid = ratings - BaselineStats.from_split(store, split).item_mean[items]
  per_user = np.bincount(users, minlength=store.num_users)
  bias = (np.bincount(users, weights=resid, minlength=store.num_users)
          / (per_user + USER_PSEUDO))
  resid = resid - bias[users]
  # Imported here rather than with the module: scipy.sparse adds about
  # 0.24 s to every `metarec` process's start-up, and only runs with
  # `model.id_init=svd` use it.
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  import scipy.sparse.linalg  # pylint: disable=g-import-not-at-top
  # The users and items with training ratings only: the others' rows and
  # columns are empty, and would let the rank exceed what the data holds.
  rows_of, user_row = np.unique(users, return_inverse=True)
  cols_of, item_col = np.unique(items, return_inverse=True)
  matrix = scipy.sparse.csr_matrix((resid, (user_row, item_col)),
                                   shape=(len(rows_of), len(cols_of)))
  rank = min(dim, min(matrix.shape) - 1)
  # (rounding leaves residuals of about 1e-16 where ratings are all equal)
  width = store.rating_range[1] - store.rating_range[0]
  if rank < 1 or np.count_nonzero(np.abs(resid) > 1e-9 * width) < 2:
    return None
  start = np.random.default_rng(SEED).standard_normal(min(matrix.shape))
  try:
    _, values, vt = scipy.sparse.linalg.svds(matrix, k=rank, v0=start)
  except (scipy.sparse.linalg.ArpackError,
          scipy.sparse.linalg.ArpackNoConvergence):
    return None
  order = np.argsort(-values)
  factors = vt[order].T * np.sqrt(np.maximum(values[order], 0.0))
  length = np.linalg.norm(factors, axis=1, keepdims=True)
  counts = np.bincount(items, minlength=store.num_items)[cols_of, None]
  weight = counts / (counts + SHRINK) * scale * np.sqrt(dim)
  out = np.zeros((store.num_items, dim), np.float32)
  out[cols_of, :rank] = factors / np.maximum(length, 1e-12) * weight
  return out
