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
