"""Embedding lookups under `model.compute_dtype=bfloat16` sum their
gradients in float32 (`models.melu.gather_rows`): the same values as
`nn.Embed`, and no bfloat16 scatter-add anywhere in the meta-gradient."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import config_path
from metarec_jax import backend, config_io, meta
from metarec_jax.models import precision
from metarec_jax.models.melu import gather_rows
from metarec_jax.train.trainer import Trainer

_SCATTER = re.compile(r'"stablehlo\.scatter".*?\}\) : \(tensor<([^>]*)>',
                      re.S)


def _scatter_types(text: str) -> list[str]:
  """Element types of the operands of every scatter in a lowered program."""
  return [t.rsplit("x", 1)[-1] for t in _SCATTER.findall(text)]


class _Table(nn.Module):
  rows: int

  @nn.compact
  def __call__(self, idx, ours: bool):
    table = nn.Embed(self.rows, 4)
    return gather_rows(table, idx) if ours else table(idx)


@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gather_rows_reads_what_nn_embed_reads(rows, dtype):
  module = _Table(rows)
  idx = jnp.array([[0, rows - 1], [rows - 1, 0]], jnp.int32)
  params = module.init(jax.random.PRNGKey(0), idx, False)
  params = precision.cast_floating(params, dtype)
  ours = module.apply(params, idx, True)
  theirs = module.apply(params, idx, False)
  assert ours.dtype == theirs.dtype == dtype
  np.testing.assert_array_equal(np.asarray(ours, np.float32),
                                np.asarray(theirs, np.float32))


def test_bfloat16_gradient_of_many_rows_is_summed_in_float32():
  # 4,096 reads of one row: a bfloat16 running sum stops at 256 (256 + 1
  # rounds back to 256); summed in float32 and rounded once it is 4,096.
  module = _Table(3)
  idx = jnp.ones((4096,), jnp.int32)
  params = precision.cast_floating(
      module.init(jax.random.PRNGKey(0), idx, True), jnp.bfloat16)
  grad = jax.grad(lambda p: jnp.sum(
      module.apply(p, idx, True).astype(jnp.float32)))(params)
  table = np.asarray(grad["params"]["Embed_0"]["embedding"], np.float32)
  np.testing.assert_array_equal(table[1], np.full(4, 4096.0))
  text = jax.jit(jax.grad(lambda p: jnp.sum(module.apply(
      p, idx, True).astype(jnp.float32)))).lower(params).as_text()
  assert _scatter_types(text) == ["f32"]


@pytest.mark.parametrize("model_name", ["melu", "idemb"])
def test_bfloat16_meta_gradient_has_no_bfloat16_scatter(tmp_path, model_name):
  config = config_io.load_config_file(config_path("tiny"))
  config.model.name = model_name
  config.model.compute_dtype = "bfloat16"
  config.meta.second_order = True
  trainer = Trainer(config, str(tmp_path))
  exp = trainer.exp
  tasks = trainer.sampler.batch(0)
  params = exp.model.init(jax.random.PRNGKey(0))
  fn = lambda mp, t: meta.meta_grad(exp.model.loss_fn, mp, t,  # noqa: E731
                                    config=exp.meta_config)
  mp = {"model": params, "inner": None}
  text = jax.jit(fn).lower(mp, tasks).as_text()
  types = _scatter_types(text)
  # (On an accelerator the tiny config's tables, of at most 64 rows, are
  # all read by one-hot matmuls there: no scatter at all.)
  assert types or backend.defaults().onehot_vocab >= 64, (
      "the embedding tables' gradients are scatter-adds")
  assert "bf16" not in types, types
  loss, grad = jax.jit(fn)(mp, tasks)
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(np.asarray(g)))
             for g in jax.tree.leaves(grad["model"]))


@pytest.mark.parametrize("model_name", ["melu", "idemb"])
def test_bfloat16_keeps_gathered_tables_float32(tmp_path, model_name):
  # Casting a gathered table to bfloat16 costs table-sized passes forward
  # and back (idemb-large's 1.7 GB made bfloat16 slower than float32 on an
  # H100): no bfloat16 tensor of a gathered table's shape in the program,
  # while the rows it reads are bfloat16.
  config = config_io.load_config_file(config_path("tiny"))
  config.model.name = model_name
  config.model.compute_dtype = "bfloat16"
  trainer = Trainer(config, str(tmp_path))
  exp = trainer.exp
  tasks = trainer.sampler.batch(0)
  params = exp.model.init(jax.random.PRNGKey(0))
  # Every table on a CPU (its backend's onehot_vocab is 0); on an
  # accelerator those of more rows than its onehot_vocab.
  rows = backend.defaults().onehot_vocab
  tables = [leaf.shape for path, leaf in
            jax.tree_util.tree_leaves_with_path(params)
            if path[-1].key == "embedding" and leaf.ndim == 2
            and leaf.shape[0] > rows]
  assert tables and all(
      precision.is_gathered_table(path, leaf) for path, leaf in
      jax.tree_util.tree_leaves_with_path(params)
      if leaf.shape in tables and path[-1].key == "embedding")
  fn = lambda mp, t: meta.meta_grad(exp.model.loss_fn, mp, t,  # noqa: E731
                                    config=exp.meta_config)
  text = jax.jit(fn).lower({"model": params, "inner": None},
                           tasks).as_text()
  for shape in tables:
    table_type = "x".join(map(str, shape))
    assert f"tensor<{table_type}xf32>" in text
    assert f"tensor<{table_type}xbf16>" not in text, shape
  assert re.search(r"tensor<[0-9x]+bf16>", text), "computes in bfloat16"


@pytest.mark.parametrize("rows", [1, 7])
def test_rows_of_a_kept_table_are_cast_inside_a_bfloat16_loss(rows):
  module = _Table(rows)
  idx = jnp.array([[0, rows - 1]], jnp.int32)
  params = module.init(jax.random.PRNGKey(0), idx, True)
  (loss,) = precision.compute_in(
      (lambda p, i: module.apply(p, i, True),), "bfloat16")
  rows = loss(params, idx)
  assert rows.dtype == jnp.bfloat16
  table = params["params"]["Embed_0"]["embedding"]
  np.testing.assert_array_equal(
      np.asarray(rows, np.float32),
      np.asarray(table[idx].astype(jnp.bfloat16), np.float32))
  # Outside a loss function the rows are read as stored.
  assert module.apply(params, idx, True).dtype == jnp.float32
