"""Parameter paths and the split of a pytree into adapted and frozen leaves.

The inner loop differentiates only the leaves it adapts (MeLU adapts its
decision layers, not its embedding tables), so the gradient of a frozen
embedding table is never formed inside the inner loop.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax

PyTree = Any


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_paths(tree: PyTree) -> list[str]:
  """The '/'-joined path of every leaf of `tree`, in flatten order."""
  with_path, _ = jax.tree_util.tree_flatten_with_path(tree)
  return ["/".join(_key_name(k) for k in path) for path, _ in with_path]


def adapt_mask(tree: PyTree, patterns: tuple[str, ...]) -> tuple[bool, ...]:
  """Which leaves the inner loop adapts: those whose path matches a pattern.

  Raises:
    ValueError: a pattern matches no leaf (almost always a typo).
  """
  paths = leaf_paths(tree)
  if not patterns:
    return tuple(True for _ in paths)
  mask = [False] * len(paths)
  for pattern in patterns:
    regex = re.compile(pattern)
    hits = [i for i, p in enumerate(paths) if regex.search(p)]
    if not hits:
      raise ValueError(
          f"meta.adapt pattern {pattern!r} matches no parameter; the"
          f" parameters are: {', '.join(paths)}")
    for i in hits:
      mask[i] = True
  return tuple(mask)


def zero_matching(tree: PyTree, patterns: tuple[str, ...]) -> PyTree:
  """`tree` with the leaves whose path matches a pattern set to 0 (none
  where `patterns` is empty)."""
  if not patterns:
    return tree
  mask = adapt_mask(tree, patterns)
  leaves, treedef = jax.tree.flatten(tree)
  return treedef.unflatten([jax.numpy.zeros_like(x) if m else x
                            for x, m in zip(leaves, mask)])


@dataclasses.dataclass(frozen=True)
class Partition:
  """A pytree split into a flat dict of adapted leaves and the frozen rest.

  `adapted` maps each adapted leaf's path to the leaf; `merge(adapted)` puts
  (possibly updated) adapted leaves back into the full tree.
  """

  treedef: Any
  paths: tuple[str, ...]
  mask: tuple[bool, ...]
  leaves: tuple[Any, ...]

  @property
  def adapted(self) -> dict[str, jax.Array]:
    return {p: l for p, l, m in zip(self.paths, self.leaves, self.mask) if m}

  @property
  def frozen(self) -> dict[str, jax.Array]:
    """The leaves the inner loop does not adapt, by path."""
    return {p: l for p, l, m in zip(self.paths, self.leaves, self.mask)
            if not m}

  def merge(self, adapted: dict[str, jax.Array],
            frozen: dict[str, jax.Array] | None = None) -> PyTree:
    """The full tree from `adapted` leaves (and, if given, `frozen` ones)."""
    leaves = [adapted[p] if m else (l if frozen is None else frozen[p])
              for p, l, m in zip(self.paths, self.leaves, self.mask)]
    return jax.tree_util.tree_unflatten(self.treedef, leaves)


def partition(tree: PyTree, patterns: tuple[str, ...]) -> Partition:
  """Splits `tree` by the `adapt` patterns of a `MetaConfig`.

  Raises:
    ValueError: two leaves have one path (a key holding '/', such as
      `{"a/b": x, "a": {"b": y}}`): the adapted leaves, keyed by path, would
      silently become one.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  paths = leaf_paths(tree)
  if len(set(paths)) < len(paths):
    twice = sorted({p for p in paths if paths.count(p) > 1})
    raise ValueError(f"two parameters share the path {twice[0]!r} (a key"
                     " holding '/'?); rename one")
  return Partition(treedef, tuple(paths), adapt_mask(tree, patterns),
                   tuple(leaves))


@functools.lru_cache(maxsize=None)
def compile_patterns(patterns: tuple[str, ...]) -> tuple[re.Pattern, ...]:
  """`patterns` compiled (re.error for one that is no expression)."""
  return tuple(re.compile(p) for p in patterns)


def matches_any(path: str, patterns: tuple[str, ...]) -> bool:
  """Whether any of `patterns` is found (`re.search`) in `path`."""
  return any(r.search(path) for r in compile_patterns(patterns))


def check_differentiable(tree: PyTree, what: str) -> None:
  """Raises ValueError naming the first leaf of `tree` that is not a float
  (or complex) array: the core differentiates those leaves, and JAX's own
  error ("grad requires real- or complex-valued inputs ... got int32")
  named no leaf. `what`: how the message calls them."""
  for path, leaf in zip(leaf_paths(tree), jax.tree.leaves(tree)):
    dtype = jax.numpy.result_type(leaf)
    if not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
      raise ValueError(
          f"{what} {path!r} is {dtype}: the core differentiates them; keep"
          " integer state out of the parameters (in the batch, or leave it"
          " out of meta.adapt for adapt alone)")
