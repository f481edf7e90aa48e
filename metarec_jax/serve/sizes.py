"""What one request may ask of the server, and the padded sizes its
device calls are compiled at (`Engine.warm_up` compiles each)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from metarec_jax.data.tasks import bucket_widths


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask, and how many users one device call serves."""

  max_batch: int = 16     # users per device call
  max_k: int = 100        # recommendations per request
  max_items: int = 1000   # items per predict request
  max_ratings: int = 1000  # ratings per interaction or adapt request

  def __post_init__(self):
    for name, value in dataclasses.asdict(self).items():
      if problem := limit_problem(name, value):
        raise ValueError(f"--{name} {problem}")


# The largest value of each limit. Every power of two up to `max_batch`
# (and of four up to `max_items`) is compiled at start-up, and a request
# of those sizes must fit a device call: at --max_batch=1000000000 the
# start compiled for 7.5 minutes and grew past 10 GB, never serving.
MAXIMA = {"max_batch": 4096, "max_k": 10_000, "max_items": 100_000,
          "max_ratings": 100_000}


def limit_problem(name: str, value: int) -> str | None:
  """What is wrong with `value` for the limit `name` (None: nothing)."""
  if not 1 <= value <= MAXIMA[name]:
    return f"must be 1 to {MAXIMA[name]:,}, got {value}"
  return None


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


def support_widths(max_support: int, buckets: Sequence[int]) -> tuple[int, ...]:
  """The support widths the server compiles: the export's buckets (its
  `data.buckets`) up to the one that holds `max_support`, and beyond the
  last, doubling from it up to the width training pads `max_support` to.

  Training pads a set beyond the last bucket to a multiple of 16, one
  program per width met in the data; a server must be ready for every
  size, and that step made 32 support widths (190 programs, minutes of
  start-up) of an export with `max_support` 500 over buckets (8, 16).
  Doubling pads a user's support to at most twice its size, on the
  adaptation alone: a padded row is masked out of every sum, so the
  adapted model does not depend on the width.
  """
  top = int(bucket_widths(np.array([max_support]), buckets)[0])
  widths = {w for w in buckets if w < top} | {top}
  width = max(buckets)
  while width * 2 < top:
    width *= 2
    widths.add(width)
  return tuple(sorted(widths))
