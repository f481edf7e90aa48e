"""What one request may ask of the server, and the padded sizes its
device calls are compiled at (`Engine.warm_up` compiles each)."""

from __future__ import annotations

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask, and how many users one device call serves."""

  max_batch: int = 16     # users per device call
  max_k: int = 100        # recommendations per request
  max_items: int = 1000   # items per predict request
  max_ratings: int = 1000  # ratings per interaction or adapt request

  def __post_init__(self):
    for name, value in dataclasses.asdict(self).items():
      if value < 1:
        raise ValueError(f"--{name} must be >= 1, got {value}")


def powers(first: int, factor: int, last: int) -> tuple[int, ...]:
  """first, first*factor, ... up to the first size >= last."""
  sizes = [first]
  while sizes[-1] < last:
    sizes.append(sizes[-1] * factor)
  return tuple(sizes)


def bucket(n: int, sizes: Sequence[int]) -> int:
  """The smallest of `sizes` (ascending) that holds `n`."""
  for size in sizes:
    if size >= n:
      return size
  raise ValueError(f"{n} exceeds the largest bucket {sizes[-1]}")
