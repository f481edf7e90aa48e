"""Multi-process training on loopback: 2 processes x 2 CPU devices (gloo)
reach the parameters of 1 process x 4 devices."""

import os
import socket

import jax
import numpy as np
import orbax.checkpoint as ocp

from conftest import config_path
from procs import metarec, start

ARGS = [f"--config={config_path('tiny')}", "--config.train.num_steps=4",
        "--config.train.eval_every_steps=-1", "--config.data.buckets=(16,)",
        "--config.checkpoint.every_steps=2"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def params_at(workdir, step):
  """The saved params, restored onto this process's first device whatever
  topology saved them."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  meta = checkpointer.metadata(path)
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return checkpointer.restore(path, target)["params"]


def test_two_processes_match_one_process(tmp_path):
  single = str(tmp_path / "single")
  out = metarec("train", *ARGS, f"--workdir={single}", devices=4)
  assert out.returncode == 0, out.stderr

  multi = str(tmp_path / "multi")
  port = free_port()
  procs = [start("train", *ARGS, f"--workdir={multi}",
                 f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}", devices=2,
                 stderr_path=str(tmp_path / f"p{i}.log")) for i in (0, 1)]
  for p in procs:
    p.wait(timeout=600)
  logs = [open(tmp_path / f"p{i}.log").read() for i in (0, 1)]
  assert [p.returncode for p in procs] == [0, 0], logs
  assert "joined a run of 2 processes, 4 devices" in logs[0]
  assert "step 4/4" in logs[0] and "step 4/4" not in logs[1]  # one logger
  a, b = params_at(single, 4), params_at(multi, 4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5,
                               atol=1e-6)
