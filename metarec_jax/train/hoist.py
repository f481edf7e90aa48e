"""Features computed once per step instead of once per task chunk.

A `LinearHead` model (`meta.LinearHead`) computes each row's features `X`
from parameters the inner loop never adapts (MeLU's embedding tables).
Inside the chunked meta-step (`step.chunked_meta_grad`) every chunk used
to look its rows up and differentiate the lookups itself: each chunk's
backward pass wrote a dense gradient of every embedding table, and the
chunk loop added them up, so a step paid the tables' size once per chunk
(on melu-ref, 16 chunks of 8031-, 3403- and 2187-row tables: a fifth of
the metric learner's step). Here the step computes `X` of all its tasks
in one vectorised lookup, the chunks differentiate with respect to their
slice of `X` (the lookup is then outside them), and one backward pass of
the lookup turns the stacked `dX` into the tables' gradient: one scatter
per table per step. The values are the unhoisted ones up to summation
order (`tests/test_train_step.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from metarec_jax import meta
from metarec_jax.meta import paths

PyTree = Any

# The batch key that carries a set's precomputed features.
FEATURES = "_hoisted_features"
# Above this many bytes of features per device the chunks look their rows
# up themselves: the chunk loop exists to bound memory, and a step of very
# many tasks (an accelerator's) must not hold all their features at once.
MAX_BYTES = 256 << 20


def _read_features(params, batch):
  del params
  return batch[FEATURES]


def _read_rows(params, batch):
  del params
  return batch[FEATURES], batch["rating"], batch["mask"]


def _reading_features(lh: meta.LinearHead) -> meta.LinearHead:
  """`lh` with its features read from the batch (`FEATURES`)."""
  return dataclasses.replace(
      lh, featurize=_read_features, featurize_reads=(),
      rows=None if lh.rows is None else _read_rows)


def hoisted_losses(loss_fn, query_loss_fn, meta_config: meta.MetaConfig,
                   params: PyTree, tasks: PyTree):
  """`(loss_fn, query_loss_fn)` reading precomputed features, or None where
  the features cannot be computed once per step.

  That needs a gradient update (not Reptile's or pretraining's direction),
  a `LinearHead` whose features read no adapted leaf, a query loss that is
  the same `LinearHead` with another head (or none), and features of at
  most `MAX_BYTES`. The model's `rows` (what an encoder reads) must be its
  `featurize` (`models.recommender.rows_fn` is)."""
  if meta_config.spec.update != "grad":
    return None
  if not (isinstance(loss_fn, meta.LinearHead)
          and loss_fn.features_fixed(paths.partition(params,
                                                     meta_config.adapt))):
    return None
  if query_loss_fn is not None and not (
      isinstance(query_loss_fn, meta.LinearHead)
      and dataclasses.replace(query_loss_fn, head=loss_fn.head) == loss_fn):
    return None
  shapes = jax.eval_shape(lambda p, t: features_of(loss_fn, p, t),
                          params, tasks)
  size = sum(np.prod(s.shape) * s.dtype.itemsize
             for s in jax.tree.leaves(shapes))
  if size > MAX_BYTES:
    return None
  query = None if query_loss_fn is None else _reading_features(query_loss_fn)
  return _reading_features(loss_fn), query


def features_of(loss_fn: meta.LinearHead, params: PyTree,
                tasks: PyTree) -> dict:
  """`{"support": X, "query": X}` of every task (leading task axis)."""
  def one(task):
    return {part: loss_fn.featurize(params, task[part])
            for part in ("support", "query")}
  return jax.vmap(one)(tasks)


def with_features(tasks: PyTree, features: dict) -> PyTree:
  """`tasks` whose support and query batches carry their features."""
  return {**tasks, **{part: {**tasks[part], FEATURES: features[part]}
                      for part in ("support", "query")}}
