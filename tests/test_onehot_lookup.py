"""Small embedding tables read by a one-hot product on accelerators
(`backend.Defaults.onehot_vocab`): the same values and meta-gradients as
the gather, and the switch really changes the program."""

import dataclasses

import jax
import numpy as np
import pytest

from conftest import config_path
from metarec_jax import backend, config_io, meta
from metarec_jax.train.trainer import Trainer


def _loss_and_grad(config, workdir):
  trainer = Trainer(config, workdir)
  exp = trainer.exp
  tasks = trainer.sampler.batch(0)
  params = exp.model.init(jax.random.PRNGKey(0))
  inner = exp.meta_config
  fn = lambda mp, t: meta.meta_grad(exp.model.loss_fn, mp, t, config=inner)  # noqa: E731
  mp = {"model": params, "inner": None}
  loss, grad = jax.jit(fn)(mp, tasks)
  text = jax.jit(fn).lower(mp, tasks).as_text()
  small = [s.name for s in exp.tables.specs if s.vocab <= 64]
  return float(loss), grad, text, small


@pytest.mark.parametrize("model_name", ["melu", "idemb"])
def test_onehot_lookup_gives_the_gathers_loss_and_meta_gradient(
    tmp_path, monkeypatch, model_name):
  config = config_io.load_config_file(config_path("tiny"))
  config.model.name = model_name
  config.meta.second_order = True
  cpu = backend.defaults("cpu")
  assert cpu.onehot_vocab == 0  # gathers on CPU
  gather = _loss_and_grad(config, str(tmp_path))
  assert gather[3], "the store has small tables to switch"
  monkeypatch.setitem(backend.DEFAULTS, "cpu",
                      dataclasses.replace(cpu, onehot_vocab=64))
  onehot = _loss_and_grad(config, str(tmp_path))
  # The program changed: fewer gathers (and scatters in the gradient).
  assert onehot[2].count("gather") < gather[2].count("gather")
  assert onehot[0] == pytest.approx(gather[0], rel=1e-5)
  flat = [jax.tree.leaves(g[1]["model"]) for g in (gather, onehot)]
  assert len(flat[0]) == len(flat[1])
  for a, b in zip(*flat):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4,
                               atol=1e-6)
