"""Per-backend defaults (`metarec_jax/backend.py`)."""

from metarec_jax import backend


def test_inner_unroll_is_full_for_a_few_steps_and_rolled_for_many():
  cpu = backend.defaults("cpu").full_unroll_steps
  assert backend.inner_unroll(0, 5, "cpu") is True
  assert backend.inner_unroll(0, cpu + 1, "cpu") == 1
  assert backend.inner_unroll(0, cpu + 1, "gpu") is True
  assert backend.inner_unroll(3, 5, "gpu") == 3  # an explicit factor wins


def test_chunk_and_matmul_size_differ_on_accelerators():
  assert backend.defaults("cpu").chunk_tasks == 16
  assert backend.defaults("gpu").chunk_tasks == 0  # the whole batch
  assert backend.defaults("tpu").matmul_size > backend.defaults(
      "cpu").matmul_size


def test_small_tables_are_one_hot_products_only_on_accelerators():
  """A scatter-add into a few rows serialises on a GPU's atomics (the
  metric learner's step on an H200: 6.3 -> 4.4 ms per 4,096 tasks); on a
  CPU the gather stays (tests/test_onehot_lookup.py: same values)."""
  assert backend.defaults("cpu").onehot_vocab == 0
  assert backend.defaults("gpu").onehot_vocab >= 25  # MeLU's genres
  assert backend.defaults("tpu").onehot_vocab == backend.defaults(
      "gpu").onehot_vocab
