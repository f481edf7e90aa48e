"""Counter-based randomness: `hashing.shuffle_within` is lexsort, faster."""

import numpy as np
import pytest

from metarec_jax.data import hashing


def _lexsort(group, seed, *keys):
  return np.lexsort((hashing.uniform(seed, *keys), group))


@pytest.mark.parametrize("groups,span", [(1, 1), (7, 1), (300, 1),
                                         (5000, 1), (40, 997)])
def test_shuffle_within_equals_lexsort_of_the_draw(groups, span):
  rng = np.random.default_rng(groups)
  # Groups with gaps (span) and more than the 2**11 that fit one key.
  group = np.repeat(np.arange(groups) * span, rng.integers(1, 40, groups))
  position = rng.integers(0, 10**9, len(group))
  got = hashing.shuffle_within(group, 3, 11, group, position, 7)
  np.testing.assert_array_equal(got, _lexsort(group, 3, 11, group, position,
                                              7))


def test_shuffle_within_keeps_row_order_between_equal_draws():
  group = np.array([0, 0, 0, 1, 1, 4096, 4096, 4096])
  key = np.array([5, 9, 5, 2, 2, 1, 8, 1])  # equal keys draw equal values
  got = hashing.shuffle_within(group, 0, key)
  np.testing.assert_array_equal(got, _lexsort(group, 0, key))
  assert got.tolist().index(0) < got.tolist().index(2)


def test_shuffle_within_edge_cases():
  assert hashing.shuffle_within(np.zeros(0, np.int64), 0, 1).shape == (0,)
  np.testing.assert_array_equal(hashing.shuffle_within(np.array([3]), 0, 1),
                                [0])
  with pytest.raises(ValueError, match="non-decreasing"):
    hashing.shuffle_within(np.array([1, 0]), 0, np.arange(2))
