"""Where each leaf of the train state lives on the mesh: one rule table.

The mesh is `(tasks, model)` (`runtime.make_mesh`): a meta-batch is split
over `tasks`; `model` (`mesh.model` devices) splits the large embedding
tables by rows, so each device of a `model` group holds `1/model` of every
such table and of what the optimizer keeps beside it (Adam's moments,
Meta-SGD's per-element rates: leaves of the same shape under the same
parameter path). Everything else (the MLPs, small tables, scalars) is
replicated. A lookup of a task batch then gathers its rows from the shards,
as XLA partitions it (`jax.jit` with these shardings; the meta-step's
`shard_map` is manual over `tasks` only).

`RULES` is the only place that says what is split: the first pattern that
`re.search`es a leaf's '/'-joined state path decides, and a leaf no pattern
matches is replicated. A matched table is split only where it pays and
where it can be: it has at least `mesh.shard_min_rows` rows, and a row
count the `model` axis divides (JAX shards evenly; the model pads large
tables to a multiple of `model.table_row_multiple`, `models.table_rows`).
A table with leading axes before its rows (an ensemble's tables, stacked
over `model.members`) is split by its rows too: a rule's spec names the
trailing axes of the leaf.
"""

from __future__ import annotations

import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from metarec_jax import models as models_lib, runtime
from metarec_jax.errors import InputError
from metarec_jax.meta import paths

PyTree = Any

# (pattern over the state path, placement of a matching leaf). flax's
# `nn.Embed` names its table `embedding`: the item-ID table of `idemb`, the
# feature vocabularies of `melu` and of `idemb`'s item features. The median
# map's per-item kind (`models.calibration`) has a row per item ID too.
RULES: tuple[tuple[str, P], ...] = (
    (r"(^|/)embedding$", P(runtime.MODEL_AXIS, None)),
    (r"(^|/)median_kind$", P(runtime.MODEL_AXIS)),
)


def _rows(shape: tuple[int, ...], spec: P) -> int:
  """The rows `spec` (a rule's, over the trailing axes) splits in a leaf of
  `shape`; 0 for a leaf of fewer axes than `spec` names."""
  return shape[len(shape) - len(spec)] if len(shape) >= len(spec) else 0


def spec_for(path: str, shape: tuple[int, ...], *, model: int,
             min_rows: int) -> P:
  """The `PartitionSpec` of the leaf at `path` of `shape` (see `RULES`);
  leading axes before a rule's (a member axis) stay whole."""
  for pattern, spec in RULES:
    if re.search(pattern, path):
      rows = _rows(shape, spec)
      if model > 1 and rows >= min_rows and rows % model == 0:
        return P(*(None,) * (len(shape) - len(spec)), *spec)
      return P()
  return P()


def state_specs(abstract: PyTree, mesh: Mesh, *,
                min_rows: int) -> PyTree:
  """The `PartitionSpec` of every leaf of `abstract` (shapes suffice)."""
  model = int(mesh.shape.get(runtime.MODEL_AXIS, 1))
  leaves, treedef = jax.tree.flatten(abstract)
  specs = [spec_for(p, tuple(x.shape), model=model, min_rows=min_rows)
           for p, x in zip(paths.leaf_paths(abstract), leaves)]
  return jax.tree.unflatten(treedef, specs)


def shardings(abstract: PyTree, mesh: Mesh, *,
              min_rows: int) -> PyTree:
  """`NamedSharding`s on `mesh` for every leaf of `abstract`."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s),
                      state_specs(abstract, mesh, min_rows=min_rows))


def split_paths(abstract: PyTree, mesh: Mesh, *,
                min_rows: int) -> list[str]:
  """Paths of the leaves of `abstract` split over `model`."""
  specs = jax.tree.leaves(state_specs(abstract, mesh, min_rows=min_rows),
                          is_leaf=lambda x: isinstance(x, P))
  return [p for p, s in zip(paths.leaf_paths(abstract), specs) if s != P()]


def ragged_paths(abstract: PyTree, mesh: Mesh, *,
                 min_rows: int) -> list[tuple[str, int]]:
  """`(path (rows), rows)` of the tables `RULES` would split but whose
  rows the `model` axis does not divide (they stay replicated)."""
  model = int(mesh.shape.get(runtime.MODEL_AXIS, 1))
  out = []
  for path, leaf in zip(paths.leaf_paths(abstract), jax.tree.leaves(abstract)):
    pattern, spec = next(((p, s) for p, s in RULES if re.search(p, path)),
                         (None, None))
    rows = _rows(tuple(leaf.shape), spec) if spec is not None else 0
    if (pattern is not None and model > 1 and rows >= min_rows
        and rows % model):
      out.append((f"{path} ({rows} rows)", rows))
  return out


def padding_advice(rows: int, model: int) -> str:
  """What splits a table of `rows` rows over `model` devices: the largest
  `model.table_row_multiple` that `model` divides and that pads it (64 of
  them fit in it), for a fresh run; none where the table is too small."""
  most = rows // models_lib.PAD_FROM_MULTIPLES
  if most < model:
    return (f"too few rows to pad for {model} devices: raise"
            " mesh.shard_min_rows above them")
  multiple = model
  while multiple * 2 <= most:
    multiple *= 2
  return (f"a fresh run with model.table_row_multiple={multiple} pads"
          " them to a multiple of it")


def check_not_adapted(model_params: PyTree, adapt_patterns: tuple[str, ...],
                      mesh: Mesh, *,
                      min_rows: int) -> list[str]:
  """The model parameters split over `model`; raises `InputError` if the
  inner loop adapts one (a per-user copy of a split table would defeat the
  split and make the second-order step gather whole tables).
  """
  split = split_paths(model_params, mesh, min_rows=min_rows)
  adapted = paths.adapt_mask(model_params, tuple(adapt_patterns))
  clash = [p for p, a in zip(paths.leaf_paths(model_params), adapted)
           if a and p in split]
  if clash:
    raise InputError(
        f"mesh.model={mesh.shape[runtime.MODEL_AXIS]} splits"
        f" {', '.join(clash)}, which the inner loop adapts (meta.adapt="
        f"{tuple(adapt_patterns)!r}); adapt the head only, or raise"
        " mesh.shard_min_rows above its rows")
  return split


def bytes_on_device(tree: PyTree, device) -> int:
  """Bytes of the leaves of `tree` (jax arrays) held on `device`."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      if shard.device == device:
        total += shard.data.nbytes
  return total
