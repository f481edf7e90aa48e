"""The 2-D mesh `(tasks, model)`: large embedding tables split by rows over
`model` train like replicated ones, and a checkpoint moves between mesh
shapes (4 -> 2 -> 1 devices) bit for bit."""

import jax
import numpy as np
import pytest

from conftest import config_path
from metarec_jax import config_io, experiment, runtime
from metarec_jax.errors import InputError
from metarec_jax.meta import paths
from metarec_jax.train import Trainer, placement
from metarec_jax.workdir import checkpoint as ckpt_lib
from metarec_jax.workdir.restore import load_state

STEPS = 4  # steps compared; the checkpoint is saved half-way


def tiny_idemb():
  """configs/idemb_large.py shrunk to 400 users and 159 items: its 160-row
  ID and bias tables (and the median map's per-item kind) are split over
  4, 2 or 1 devices (width 16, one inner step, no item features: quick to
  compile; at width 8 the state is so small that the median map's fixed
  123 replicated floats and their Adam moments weigh 7% of it)."""
  config = config_io.load_config_file(config_path("idemb_large"))
  assert config.mesh.model == 4 and config.model.embed_dim == 64
  config.data.synthetic.update({
      "num_users": 400, "num_items": 159, "min_ratings": 15,
      "max_ratings": 40, "director_vocab": 40, "actor_vocab": 60,
      "zip_vocab": 30})
  config.model.update({"embed_dim": 16, "item_features": False})
  config.meta.inner_steps = 1
  config.train.tasks_per_step = 16
  config.mesh.shard_min_rows = 64
  return config


def trainer_on(workdir, devices, model):
  config = tiny_idemb()
  config.mesh.model = model
  return Trainer(config, workdir, devices=jax.devices()[:devices])


def run(trainer, state, steps):
  """`state` after the steps `steps` (a range), and their losses."""
  losses = []
  for s in steps:
    batch = jax.device_put(trainer.sampler.batch(s), trainer.task_sharding)
    state, metrics = trainer.step(state, batch, trainer.hyper)
    losses.append(float(runtime.to_host(metrics["train/loss"])))
  return state, losses


def host(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
  """4 devices, mesh.model=4: the state after STEPS // 2 steps (also
  saved), the parameters after STEPS, the losses, the work directory."""
  workdir = str(tmp_path_factory.mktemp("mesh"))
  trainer = trainer_on(workdir, 4, 4)
  assert trainer.split == ["item/bias/embedding", "item/id/embedding",
                           "median_kind"]
  state, first = run(trainer, trainer.init(trainer.rng()),
                     range(STEPS // 2))
  checkpointer = ckpt_lib.Checkpointer(workdir)
  checkpointer.save(STEPS // 2, state, config_io.to_dict(trainer.config))
  checkpointer.close()
  half = host(state.params)
  state, second = run(trainer, state, range(STEPS // 2, STEPS))
  return half, host(state.params), first + second, workdir, state


def test_tables_and_their_adam_moments_are_split_by_rows(sharded_run):
  state = sharded_run[4]
  table = state.params["model"]["item"]["id"]["embedding"]
  assert table.shape == (160, 16)
  assert {s.data.shape for s in table.addressable_shards} == {(40, 16)}
  adam = state.opt_state[1][0]
  for moment in (adam.mu, adam.nu):
    leaf = moment["model"]["item"]["id"]["embedding"]
    assert leaf.sharding.spec == table.sharding.spec
  # The rest (the meta-learned user vector, the biases) stays whole.
  user = state.params["model"]["user"]
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(user))
  # What `metarec bench` reports as param_bytes_per_device: the tables
  # dominate, so a device holds little more than a quarter of the state.
  replicated = sum(x.nbytes for x in jax.tree.leaves(
      (state.params, state.opt_state)))
  assert placement.bytes_on_device((state.params, state.opt_state),
                                   jax.devices()[0]) <= 0.3 * replicated


def test_sharded_loss_matches_the_replicated_run(sharded_run, tmp_path):
  trainer = trainer_on(str(tmp_path), 4, 1)
  assert trainer.split == []
  _, losses = run(trainer, trainer.init(trainer.rng()), range(STEPS))
  np.testing.assert_allclose(losses, sharded_run[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("devices", [2, 1])
def test_resume_on_fewer_devices(sharded_run, devices):
  """Saved on 4 devices with mesh.model=4, resumed on 2 with mesh.model=2
  and on 1: the same parameters bit for bit, and the same two more steps."""
  half, final, _, workdir, _ = sharded_run
  trainer = trainer_on(workdir, devices, devices)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  state, _, step = checkpointer.restore(trainer.abstract_state())
  checkpointer.close()
  assert step == STEPS // 2
  for a, b in zip(half, host(state.params)):
    np.testing.assert_array_equal(a, b)
  table = state.params["model"]["item"]["id"]["embedding"]
  assert {s.data.shape[0] for s in table.addressable_shards} == {
      160 // devices}
  state, _ = run(trainer, state, range(STEPS // 2, STEPS))
  for a, b in zip(final, host(state.params)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_eval_restores_a_split_checkpoint_replicated(sharded_run):
  """`metarec eval` and `export` read it onto their 1-D mesh, whole."""
  half, _, _, workdir, _ = sharded_run
  exp = experiment.build(tiny_idemb(), workdir)
  state = load_state(exp, workdir, runtime.make_mesh())
  assert all(x.sharding.is_fully_replicated
             for x in jax.tree.leaves(state.params))
  for a, b in zip(half, host(state.params)):
    np.testing.assert_array_equal(a, b)


def test_a_catalogue_no_even_axis_divides_is_padded_and_split(tmp_path,
                                                              caplog):
  """158 items: tables of 159 rows, which no `mesh.model` of 2 divides.
  `model.table_row_multiple=1` leaves them replicated with a warning that
  names the key; 2 pads them to 160 rows, split over 2 devices, and the
  run trains as the same padded model does replicated."""
  def trainer(multiple, model, name):
    config = tiny_idemb()
    config.data.synthetic.num_items = 158
    config.model.table_row_multiple = multiple
    config.mesh.model = model
    return Trainer(config, str(tmp_path / name), devices=jax.devices()[:2])

  with caplog.at_level("WARNING"):
    ragged = trainer(1, 2, "ragged")
  assert ragged.split == []
  assert "item/id/embedding (159 rows)" in caplog.text
  assert "model.table_row_multiple=2 pads them" in caplog.text
  split = trainer(2, 2, "split")
  assert split.split == ["item/bias/embedding", "item/id/embedding",
                         "median_kind"]
  state = split.init(split.rng())
  table = state.params["model"]["item"]["id"]["embedding"]
  assert table.shape == (160, 16)
  assert {s.data.shape for s in table.addressable_shards} == {(80, 16)}
  _, split_losses = run(split, state, range(2))
  replicated = trainer(2, 1, "replicated")
  assert replicated.split == []
  _, losses = run(replicated, replicated.init(replicated.rng()), range(2))
  np.testing.assert_allclose(split_losses, losses, rtol=1e-5, atol=1e-6)


def test_a_split_table_the_inner_loop_adapts_is_refused(tmp_path):
  config = tiny_idemb()
  config.mesh.model = 2
  config.meta.adapt = ("^item/id/",)
  with pytest.raises(InputError, match="inner loop adapts"):
    Trainer(config, str(tmp_path), devices=jax.devices()[:2])


def test_placement_rule_table():
  spec = placement.spec_for
  split = jax.sharding.PartitionSpec(runtime.MODEL_AXIS, None)
  assert spec("params/model/params/item/id/embedding", (1024, 8), model=4,
              min_rows=64) == split
  assert spec("opt_state/1/0/mu/model/params/item/id/embedding", (1024, 8),
              model=4, min_rows=64) == split
  # Too small, not divisible, not a table, or no model axis: replicated.
  for path, shape, model in (("x/embedding", (32, 8), 4),
                             ("x/embedding", (1026, 8), 4),
                             ("user/embedding", (1024,), 4),
                             ("fc1/kernel", (1024, 8), 4),
                             ("x/embedding", (1024, 8), 1)):
    assert spec(path, shape, model=model, min_rows=64) == (
        jax.sharding.PartitionSpec())
  # An ensemble's table [members, rows, dim] is split by its rows.
  assert spec("params/model/embed/item_id/embedding", (2, 1024, 8), model=4,
              min_rows=64) == jax.sharding.PartitionSpec(
                  None, runtime.MODEL_AXIS, None)
  # A table too ragged to split is named (the trainer warns).
  mesh = runtime.make_mesh(4, jax.devices()[:4])
  tables = {"a": {"embedding": jax.ShapeDtypeStruct((1026, 8), np.float32)},
            "b": {"embedding": jax.ShapeDtypeStruct((1024, 8), np.float32)},
            "c": {"embedding": jax.ShapeDtypeStruct((2, 1026, 8),
                                                    np.float32)}}
  assert placement.ragged_paths(tables, mesh, min_rows=64) == [
      ("a/embedding (1026 rows)", 1026), ("c/embedding (1026 rows)", 1026)]
  # What splits it: the largest multiple of 4 that 64 times fits in it
  # (the warning advised 1,024's multiples, which do not pad a table of
  # fewer than 65,536 rows: a reviewer's finding).
  assert placement.padding_advice(1026, 4) == (
      "a fresh run with model.table_row_multiple=16 pads them to a"
      " multiple of it")
  assert placement.padding_advice(601, 2).startswith(
      "a fresh run with model.table_row_multiple=8 ")
  assert placement.padding_advice(200, 4).startswith("too few rows")
  assert placement.split_paths(tables, mesh, min_rows=64) == ["b/embedding"]



def test_an_ensembles_stacked_tables_are_split_by_rows(tmp_path):
  """`model.members=2` stacks each table as [members, rows, dim]: its rows
  are split like a single model's (they stayed replicated, unnamed), with
  the Adam moments, and the run trains as the replicated one does."""
  config = config_io.load_config_file(config_path("tiny"))
  config.model.update({"members": 2, "anchor": False, "item_id": True})
  config.data.synthetic.num_items = 159  # an item_id table of 160 rows
  config.meta.inner_steps = 1
  config.mesh.update({"model": 2, "shard_min_rows": 64})
  trainer = Trainer(config, str(tmp_path / "split"),
                    devices=jax.devices()[:2])
  assert "embed/item_id/embedding" in trainer.split
  state = trainer.init(trainer.rng())
  leaves = dict(zip(paths.leaf_paths(state), jax.tree.leaves(state)))
  tables = [leaf for path, leaf in leaves.items()
            if path.endswith("embed/item_id/embedding")]
  assert len(tables) == 3  # the parameter and Adam's two moments
  for leaf in tables:
    assert leaf.shape == (2, 160, 8)
    assert {s.data.shape for s in leaf.addressable_shards} == {(2, 80, 8)}
  _, split_losses = run(trainer, state, range(2))
  config.mesh.model = 1
  replicated = Trainer(config, str(tmp_path / "replicated"),
                       devices=jax.devices()[:2])
  assert replicated.split == []
  _, losses = run(replicated, replicated.init(replicated.rng()), range(2))
  np.testing.assert_allclose(split_losses, losses, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tasks,chunk,expected", [
    (5, 0, "train.tasks_per_step=5 must be a positive multiple of the 2 task"
           " shards (4 devices / mesh.model=2)"),
    (16, 3, "train.tasks_per_step=16 over 2 task shards (4 devices /"
            " mesh.model=2) is 8 tasks per shard, not a multiple of"
            " train.chunk_tasks=3")])
def test_a_batch_the_task_shards_cannot_split_names_them(tmp_path, tasks,
                                                         chunk, expected):
  """With a model axis the tasks split over its groups: the error counts
  those, not "the 2 devices" of a 4-device run."""
  config = tiny_idemb()
  config.mesh.model = 2
  config.train.update({"tasks_per_step": tasks, "chunk_tasks": chunk})
  with pytest.raises(InputError) as raised:
    Trainer(config, str(tmp_path), devices=jax.devices()[:4])
  assert str(raised.value) == expected


@pytest.mark.parametrize("model, expected", [(2, 4), (1000000, 1)])
def test_a_model_axis_beyond_any_host_makes_no_million_cpu_devices(
    monkeypatch, model, expected):
  """`mesh.model=1000000` split the CPU into a million devices (one per
  model shard): 7 minutes into 24 GB, killed without a word. Beyond
  `MAX_CPU_DEVICES` the task shards alone are made, and `check_model_axis`
  refuses the model axis naming them."""
  made = []
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setattr(runtime, "cpu_cores", lambda: 4)
  monkeypatch.setattr(jax.config, "update",
                      lambda name, value: made.append((name, value)))
  runtime.configure_cpu_devices(0, 16, model)
  assert made == [("jax_num_cpu_devices", expected)]
  if model > expected:
    with pytest.raises(InputError, match=f"mesh.model={model} must divide"
                       f" the {expected} devices"):
      runtime.check_model_axis(model, devices=expected,
                               local_devices=expected)


def test_cpu_devices_overridden_by_xla_flags_says_so(monkeypatch, caplog):
  # train.cpu_devices=2 under XLA_FLAGS' count of 4 ran on 4 in silence.
  made = []
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  monkeypatch.setattr(jax.config, "update",
                      lambda name, value: made.append((name, value)))
  with caplog.at_level("WARNING", logger="metarec"):
    runtime.configure_cpu_devices(0, 16)
  assert made == [] and caplog.messages == []  # automatic: nothing to say
  with caplog.at_level("WARNING", logger="metarec"):
    runtime.configure_cpu_devices(2, 16)
  assert made == [] and caplog.messages == [
      "train.cpu_devices=2 is ignored: XLA_FLAGS sets"
      " --xla_force_host_platform_device_count, which wins"]


def test_a_model_axis_that_does_not_divide_names_the_values_that_do():
  """A mesh.model=4 run resumed on 2 devices read the key from its
  config.json and named no way on: any divisor resumes the same run."""
  with pytest.raises(InputError, match=r"mesh.model=4 must divide the 2"
                     r" devices of each process \(2 in all\):"
                     r" --config.mesh.model=1 or 2 \(a run saved on more"):
    runtime.check_model_axis(4, devices=2, local_devices=2)
  with pytest.raises(InputError, match="--config.mesh.model=1 or 2 or 4 "):
    runtime.check_model_axis(3, devices=8, local_devices=4)
