"""Counter-based randomness: a random number as a pure function of its keys.

Splits and batches must not depend on how the work is divided (processes,
chunks, the order users are visited in), so instead of drawing from a
stateful generator we hash (seed, key, ...) with splitmix64, vectorised in
numpy.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
  with np.errstate(over="ignore"):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash64(seed: int, *keys) -> np.ndarray:
  """A uint64 hash of `seed` and the broadcast integer arrays `keys`."""
  with np.errstate(over="ignore"):
    h = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + _GOLDEN)
    for key in keys:
      key = np.asarray(key).astype(np.int64).view(np.uint64)
      h = _mix(h ^ (key + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))))
    return np.asarray(h, np.uint64)


def uniform(seed: int, *keys) -> np.ndarray:
  """Uniform floats in [0, 1), a pure function of `seed` and `keys`."""
  return (hash64(seed, *keys) >> np.uint64(11)).astype(np.float64) * (
      1.0 / (1 << 53))


_DRAW_BITS = 53  # the bits of `uniform`'s draw
_GROUP_SPAN = 1 << (64 - _DRAW_BITS)  # groups that fit beside it in a uint64


def shuffle_within(group: np.ndarray, seed: int, *keys) -> np.ndarray:
  """The permutation ordering rows by `group`, then by `uniform(seed, *keys)`.

  Equal to `np.lexsort((uniform(seed, *keys), group))` (ties in the draw
  keep row order), for a non-decreasing `group`, at under a quarter of
  its cost (0.6 against 2.7 ms for a melu-ref batch's 20,000 rows):
  `uniform`'s order is that of the integer draw `hash64 >> 11`, so the
  group fits in the 11 bits above it and one stable sort of uint64 keys
  does what lexsort does with two. Groups are taken `2**11` at a time so
  that any number of them fits.
  """
  group = np.asarray(group, np.int64)
  if np.any(group[1:] < group[:-1]):
    raise ValueError("shuffle_within needs a non-decreasing group")
  draw = hash64(seed, *keys) >> np.uint64(64 - _DRAW_BITS)
  draw = np.broadcast_to(draw, group.shape)
  if not len(group):
    return np.zeros(0, np.int64)
  bases = np.arange(group[0], group[-1] + 1, _GROUP_SPAN)
  bounds = np.append(np.searchsorted(group, bases, side="left"), len(group))
  parts = []
  for base, lo, hi in zip(bases, bounds[:-1], bounds[1:]):
    key = ((group[lo:hi] - base).astype(np.uint64) << np.uint64(_DRAW_BITS)
           | draw[lo:hi])
    parts.append(lo + np.argsort(key, kind="stable"))
  return np.concatenate(parts)
