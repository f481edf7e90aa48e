"""A checkpoint is used only if it is what was saved and it is finite.

In process, on real orbax folders written by `Checkpointer` (the train loop,
`metarec eval` and `metarec export` all restore through it).
"""

import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import count_compiles
from metarec_jax.workdir import checkpoint as ckpt_lib


def make_state(seed: int, *, nan: bool = False) -> dict:
  rng = np.random.default_rng(seed)
  # Random int32 bits do not compress: orbax's zstd stores them verbatim,
  # so the test can find and overwrite them inside the data file.
  w = rng.integers(-2**31, 2**31 - 1, 16384, dtype=np.int64).astype(np.int32)
  b = rng.normal(size=8).astype(np.float32)
  if nan:
    b[3] = np.nan
  return jax.device_put({"step": np.int32(seed), "params": {"w": w, "b": b}})


def abstract(state):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
      state)


def saved(tmp_path, steps=(1, 2)) -> ckpt_lib.Checkpointer:
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=5,
                                       async_save=False)
  for step in steps:
    checkpointer.save(step, make_state(step), {"note": "test"})
  checkpointer.wait()
  return checkpointer


def test_bytes_changed_in_place_fall_back_to_the_older_checkpoint(
    tmp_path, caplog):
  checkpointer = saved(tmp_path)
  raw = np.asarray(make_state(2)["params"]["w"]).tobytes()
  folder = os.path.join(checkpointer.directory, "2", "state")
  files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
  hits = [(f, open(f, "rb").read().find(raw[:4096])) for f in files]
  victim, offset = next((f, o) for f, o in hits if o >= 0)
  size = os.path.getsize(victim)
  with open(victim, "r+b") as f:  # same size, 16 bytes of the data changed
    f.seek(offset + 1000)
    f.write(b"\x00" * 16)
  assert os.path.getsize(victim) == size
  with caplog.at_level(logging.WARNING, logger="metarec"):
    state, _, step = checkpointer.restore(abstract(make_state(2)))
  checkpointer.close()
  assert step == 1
  np.testing.assert_array_equal(state["params"]["w"],
                                make_state(1)["params"]["w"])
  warning = [r.getMessage() for r in caplog.records
             if "falling back" in r.getMessage()]
  assert len(warning) == 1, caplog.text
  assert "checkpoint of step 2" in warning[0]
  assert folder in warning[0] and "params/w" in warning[0]
  assert "differ from the digests recorded at save time" in warning[0]
  assert "checkpoint of step 1" in warning[0]
  # Moved aside, out of the way of a new save of step 2.
  assert sorted(os.listdir(checkpointer.directory)) == ["1"]


def test_a_non_finite_checkpoint_is_never_restored(tmp_path, caplog):
  """As left by a run before the state was guarded: NaN, no digests."""
  checkpointer = saved(tmp_path, steps=(1,))
  manager = ocp.CheckpointManager(checkpointer.directory,
                                  item_handlers=ckpt_lib._handlers())  # pylint: disable=protected-access
  manager.save(2, args=ocp.args.Composite(
      state=ocp.args.StandardSave(make_state(2, nan=True)),
      config=ocp.args.JsonSave({"format_version": 1, "step": 2,
                                "config": {}})))
  manager.wait_until_finished()
  manager.close()
  with caplog.at_level(logging.WARNING, logger="metarec"):
    _, _, step = checkpointer.restore(abstract(make_state(2)))
  assert step == 1
  assert ("the checkpoint of step 2 in" in caplog.text
          and "holds non-finite values in 1 leaves (params/b); falling back"
          " to the checkpoint of step 1" in caplog.text), caplog.text
  # With no finite one left, it is an error, never a fresh start.
  checkpointer.close()
  manager = ocp.CheckpointManager(checkpointer.directory,
                                  item_handlers=ckpt_lib._handlers())  # pylint: disable=protected-access
  manager.delete(1)
  manager.close()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
  os.rename(os.path.join(tmp_path, "checkpoints-unreadable",
                         os.listdir(tmp_path / "checkpoints-unreadable")[0]),
            os.path.join(checkpointer.directory, "2"))
  with pytest.raises(ckpt_lib.CheckpointError, match="no usable checkpoint"
                     ".*step 2 holds non-finite values"):
    checkpointer.restore(abstract(make_state(2)))
  checkpointer.close()


def test_a_non_finite_state_is_not_saved(tmp_path):
  checkpointer = saved(tmp_path, steps=(1,))
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"step 2: the state holds non-finite values in 1"
                     r" leaves \(params/b\); not saved"):
    checkpointer.save(2, make_state(2, nan=True), {})
  checkpointer.wait()
  assert checkpointer.steps() == [1]
  checkpointer.close()


def test_saving_a_replicated_state_compiles_nothing(tmp_path):
  """On CPU each save writes the whole replicated arrays: orbax's
  replica-parallel saving would compile a slicing program per array per
  replica at every save."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("tasks",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put(make_state(1), replicated)
  assert len(jax.devices()) > 1 and state["params"]["w"].is_fully_replicated
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=5)
  with count_compiles() as compiles:
    for step in (1, 2):
      checkpointer.save(step, state, {"note": "test"})
    checkpointer.close()
  assert compiles[0] == 0
  restored = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  assert restored.steps() == [1, 2]


def test_a_save_that_fails_at_once_names_its_own_step(tmp_path, monkeypatch):
  """A save whose own call fails (a killed peer's collective, in a run of
  several processes) named the step saved before it, committed whole:
  "cannot write checkpoints/16 ...; the newest checkpoint is still step
  16", read as checkpoint 16 being damaged."""
  from metarec_jax.errors import OutputError  # pylint: disable=g-import-not-at-top
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=5)  # asynchronous
  checkpointer.save(16, make_state(16), {"note": "test"})

  def lost_peer(*args, **kwargs):
    raise RuntimeError("UNKNOWN: Gloo AllGather failed: Connection reset by"
                       " peer")

  monkeypatch.setattr(checkpointer.manager, "save", lost_peer)
  with pytest.raises(OutputError) as caught:
    checkpointer.save(18, make_state(18), {"note": "test"})
  message = str(caught.value)
  assert os.path.join("checkpoints", "18") in message, message
  assert "Gloo AllGather failed" in message
  assert "the newest checkpoint is still step 16" in message
  assert ckpt_lib.Checkpointer(str(tmp_path), read_only=True).steps() == [16]
