"""An ensemble's loss: independent members stacked in one parameter pytree.

A model of M copies keeps every parameter of a copy under its
usual path with a leading member axis (the leaves matched by `stacked`);
the other leaves are shared. `Members(single, stacked)` is the
ensemble's `loss_fn`: the sum over the members of `single` (one member's
loss) on that member's slice. The core (`adapt`, `task_loss`) runs one
member's computation under `jax.vmap` over the member axis, so each member
adapts exactly as it would alone, with every structure `single` offers
(a `LinearHead`'s hoisting and dual form included), and the meta-gradient
of the sum is each member's own on its slice.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from metarec_jax.meta import paths

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Members:
  """`loss(params, batch) = sum_m single(params[m], batch)`.

  Attributes:
    single: one member's `loss_fn(params, batch)` (any the core takes).
    stacked: regexes of the parameter paths with a member axis (their
      leading axis; its length is the number of members).
  """

  single: Callable[[PyTree, PyTree], jax.Array]
  stacked: tuple[str, ...]

  def axes(self, params: PyTree) -> PyTree:
    """`params`' `in_axes` for `jax.vmap` over the members: 0 for stacked
    leaves, None (shared) for the others."""
    names = paths.leaf_paths(params)
    return jax.tree.unflatten(jax.tree.structure(params), [
        0 if paths.matches_any(n, self.stacked) else None for n in names])

  def each(self, fn: Callable[[PyTree], Any], params: PyTree,
           out_axes: Any = 0) -> Any:
    """`fn(member's params)` for every member, vmapped."""
    return jax.vmap(fn, in_axes=(self.axes(params),),
                    out_axes=out_axes)(params)

  def check(self, config, params: PyTree = None) -> None:
    """Refuses an algorithm whose learned inner parameters belong to one
    model (a rate per element, an encoder of its features): the members
    share `inner`, so they could not be vmapped (an opaque scan error).
    With `params`, also an adapted leaf that is not stacked: each member
    would adapt its own copy, which `adapt` cannot return as one shared
    leaf (an opaque vmap error), while `task_loss` would have trained on
    it."""
    if params is not None:
      mask = paths.adapt_mask(params, config.adapt)
      shared = [name for name, adapted in zip(paths.leaf_paths(params), mask)
                if adapted and not paths.matches_any(name, self.stacked)]
      if shared:
        raise ValueError(
            f"meta.adapt adapts {', '.join(map(repr, shared))}, shared by"
            " the members of an ensemble (meta.Members): each member would"
            " adapt its own copy; leave it out of meta.adapt (or, calling"
            " the core, stack it: Members.stacked)")
    spec = config.spec
    if spec.encoder or spec.rates == "element":
      raise ValueError(
          f"meta.algorithm={config.algorithm} learns "
          + ("an encoder of one model's features" if spec.encoder
             else "a rate per element of one model's parameters")
          + "; an ensemble (meta.Members) adapts each member by gradient"
          " steps with rates the members share")

  def __call__(self, params: PyTree, batch: PyTree) -> jax.Array:
    return jnp.sum(self.each(lambda p: self.single(p, batch), params))


def single(loss_fn):
  """One member's loss of an ensemble's `loss_fn` (others: unchanged)."""
  return loss_fn.single if isinstance(loss_fn, Members) else loss_fn


def stacked(loss_fn) -> tuple[str, ...]:
  """The patterns of an ensemble's stacked leaves; () for one model."""
  return loss_fn.stacked if isinstance(loss_fn, Members) else ()
