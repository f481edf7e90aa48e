"""Multi-process training on loopback: 2 processes x 2 CPU devices (gloo)
reach the parameters and the validation of 1 process x 4 devices, even
when one of them computes its item factors or compiles long after the
other."""

import os
import socket

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import config_path
from procs import metarec, start

ARGS = [f"--config={config_path('tiny')}", "--config.train.num_steps=4",
        "--config.train.eval_every_steps=2", "--config.data.buckets=(16,)",
        "--config.checkpoint.every_steps=2"]


def validation_lines(log: str) -> list[str]:
  """The log's validation lines (validated shares, priors, maps, MAEs),
  without their time stamps."""
  return [line[9:] for line in log.splitlines()
          if line[9:].startswith("I step") and "tasks/s" not in line]


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


def train_two_processes(workdir, args, *, late_compile_s=(0, 0),
                        while_running=None, timeout=1200, **start_keys):
  """`metarec train ARGS` as 2 processes x 2 devices on loopback, process i
  starting its first compilation `late_compile_s[i]` seconds late and
  logging to `WORKDIR.pI.log`; `while_running(processes)`, if given, is
  called once they are started; each may take `timeout` seconds more;
  `start_keys` go to `procs.start`. Returns their logs after checking that
  both exited 0."""
  port = free_port()
  procs = [start("train", *args, f"--workdir={workdir}",
                 f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}", devices=2,
                 stderr_path=f"{workdir}.p{i}.log",
                 late_compile_s=late_compile_s[i], **start_keys)
           for i in (0, 1)]
  try:
    if while_running is not None:
      while_running(procs)
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      p.kill()
  logs = [open(f"{workdir}.p{i}.log").read() for i in (0, 1)]
  assert [p.returncode for p in procs] == [0, 0], logs
  return logs


@pytest.fixture(scope="module")
def ratings_alone(tmp_path_factory):
  """ARGS on a ratings file alone (`data.name=generic`), whose `item_key`
  table starts at the SVD's item factors (`model.id_init=svd`)."""
  import datafiles  # pylint: disable=g-import-not-at-top
  data = tmp_path_factory.mktemp("ratings_alone") / "data"
  datafiles.taste_ratings(data, users=200, items=60)
  return ARGS + ["--config.data.name=generic", f"--config.data.root={data}"]


@pytest.fixture(scope="module")
def two_process_run(ratings_alone, tmp_path_factory):
  """`ratings_alone` trained to step 4 by 2 processes, process 1 late
  twice: its SVD ends 35 s after process 0's and its first compilation
  starts 35 s late; and by 1 process x 4 devices (on the CPU that the late
  process leaves idle): (2-process work directory, its logs, 1-process
  work directory). Trained once, for the tests below (so running one of
  them alone costs this run's 70 s of waiting first)."""
  top = tmp_path_factory.mktemp("two_processes")
  single = str(top / "single")
  reference = start("train", *ratings_alone, f"--workdir={single}",
                    devices=4, stderr_path=f"{single}.log")
  multi = str(top / "run")
  logs = train_two_processes(multi, ratings_alone, late_compile_s=(0, 35),
                             other_factors_in="1:late")
  with open(f"{single}.log") as f:
    assert reference.wait(timeout=1200) == 0, f.read()
  return multi, logs, single


def assert_same_params(single, multi, step=4):
  a, b = params_at(single, step), params_at(multi, step)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5,
                               atol=1e-6)
  return a


def test_two_processes_match_one_process_even_if_one_is_late(
    two_process_run):
  """Process 1 starts compiling 35 s after process 0, as when its
  compilation cache is empty and process 0's is warm (with a cache per host,
  every restart is like this; configs/default.py took 9 minutes to compile
  on a loaded 2-core machine). Process 0 must wait at a barrier, not in the
  programs' first collective, whose gloo connection gives up after 30 s
  (without the barrier this fails: "Gloo context initialization failed:
  Connect timeout"). Before that, process 1's SVD ended 35 s after process
  0's: it still takes process 0's item factors (the broadcast's gloo
  connection gave up after 30 s: helper R3)."""
  multi, logs, single = two_process_run
  assert "joined a run of 2 processes, 4 devices" in logs[0]
  assert "step 4/4" in logs[0] and "step 4/4" not in logs[1]  # one logger
  # The end's verdicts too (process 1 printed them as well).
  assert "validation: only" in logs[0] and "validation:" not in logs[1]
  with open(f"{single}.log") as f:
    expected = validation_lines(f.read())
  assert any("validation MAE" in line for line in expected), expected
  assert validation_lines(logs[0]) == expected
  assert "item_key" in assert_same_params(single, multi)["model"]["embed"]


# configs/idemb_large.py shrunk as in tests/test_mesh.py, its 160-row item
# tables split over mesh.model=2 devices of each process.
MESH = [f"--config={config_path('idemb_large')}",
        "--config.data.synthetic.num_users=400",
        "--config.data.synthetic.num_items=159",
        "--config.data.synthetic.min_ratings=15",
        "--config.model.embed_dim=8",
        "--config.model.item_features=false", "--config.meta.inner_steps=1",
        "--config.train.tasks_per_step=16", "--config.mesh.model=2",
        "--config.mesh.shard_min_rows=64", "--config.train.num_steps=2",
        "--config.train.eval_every_steps=-1",
        "--config.checkpoint.every_steps=2"]


def test_two_processes_match_one_process_with_a_model_axis(tmp_path):
  """2 processes x 2 devices with mesh.model=2 reach the parameters of 1
  process x 4 devices with mesh.model=2: both a (tasks 2, model 2) mesh.
  Validated, the split tables' move onto the validation's 1-D mesh is
  compiled in the warm-up: it was warned about as 9 "compilations after
  the warm-up: a batch shape escaped the buckets"."""
  args = MESH + ["--config.train.eval_every_steps=2"]
  single = str(tmp_path / "single")
  out = metarec("train", *args, f"--workdir={single}", devices=4)
  assert out.returncode == 0, out.stderr
  assert "split over mesh.model=2 devices" in out.stderr
  multi = str(tmp_path / "multi")
  logs = train_two_processes(multi, args)
  assert all("after the warm-up" not in log for log in logs), logs
  assert_same_params(single, multi, step=2)


@pytest.mark.parametrize("signame, to", [("SIGTERM", 0), ("SIGINT", 1)])
def test_a_signal_to_one_process_saves_every_process_at_one_step(
    tmp_path, signame, to):
  """JAX's preemption notifier takes SIGTERM in a multi-process run, so
  that the processes agree on the step to save at. Putting the command's
  own handler back after the join (the join waits with the default
  action) replaced it: process 0 alone ended, nothing was saved, and the
  other process hung. A Ctrl-C (SIGINT) to one process stopped it alone,
  into the save's collectives while the other ran the next step's: both
  hung for good, deaf to SIGTERM; it now goes the same way as SIGTERM."""
  import re  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  from procs import checkpoint_steps, wait_for  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  args = [f"--config={config_path('tiny')}", "--config.train.num_steps=5000",
          "--config.train.eval_every_steps=-1", "--config.data.buckets=(16,)",
          "--config.checkpoint.every_steps=5000"]

  def signal_one_process(procs):
    wait_for(lambda: re.search(r"step \d{2,}/5000",
                               open(f"{workdir}.p0.log").read()),
             proc=procs[0], timeout=600, interval=0.1)
    procs[to].send_signal(getattr(signal, signame))

  logs = train_two_processes(workdir, args,
                             while_running=signal_one_process, timeout=120)
  stopped = re.search(r"stopped by a signal at step (\d+) \(saved\)",
                      logs[0])
  assert stopped, logs[0]
  assert int(stopped.group(1)) in checkpoint_steps(workdir)
  for log in logs:  # its resume command alone would train one process
    assert "on every process, with its distributed flags" in log, log


@pytest.mark.parametrize("lost", ["killed", "frozen"])
def test_a_lost_process_stops_the_other_in_one_line(tmp_path, lost):
  """kill -9 of one process left the other inside a gloo collective until
  JAX's heartbeat timeout aborted it with a C++ stack trace (94 s here);
  the liveness watch ends it within --peer_timeout, naming the process.
  A frozen process 0 (kill -STOP; a host lost without closing its
  connections) held the watch's call to the coordination service it
  hosts: the same abort 84 s later (helper P)."""
  import re  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  from procs import wait_for  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  port = free_port()
  args = [f"--config={config_path('tiny')}", "--config.train.num_steps=50000",
          "--config.train.eval_every_steps=-1", "--config.data.buckets=(16,)",
          "--config.checkpoint.every_steps=50000", "--peer_timeout=5"]
  procs = [start("train", *args, f"--workdir={workdir}",
                 f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}", devices=2,
                 stderr_path=f"{workdir}.p{i}.log") for i in (0, 1)]
  gone, left = (1, 0) if lost == "killed" else (0, 1)
  try:
    wait_for(lambda: re.search(r"step \d{2,}/50000",
                               open(f"{workdir}.p0.log").read()),
             proc=procs[0], timeout=600, interval=0.1)
    procs[gone].send_signal(signal.SIGKILL if lost == "killed"
                            else signal.SIGSTOP)
    procs[left].wait(timeout=90)  # JAX's own abort comes after 100 s
  finally:
    for p in procs:
      p.kill()
  log = open(f"{workdir}.p{left}.log").read()
  assert procs[left].returncode == 1, log[-2000:]
  last = log.strip().splitlines()[-1]
  who = ("process 1 of the run at 127.0.0.1:{port}" if lost == "killed" else
         "process 0 of the run at 127.0.0.1:{port} (the coordination"
         " service)").format(port=port)
  assert last.startswith(
      f"metarec train: error: process {left}: {who} has not answered for"
      " 5 s (--peer_timeout"), last
  assert "resume from the last checkpoint" in last
  assert "Check failure" not in log  # JAX's abort


@pytest.fixture(scope="module")
def tiny_two_process_run(tmp_path_factory):
  """A run of ARGS trained by 2 processes (to step 4), trained once for
  the tests that damage a copy of it. (Garbage in its step 4's saved
  metrics is not repaired from the run's record, so the run falls back to
  step 2; on `two_process_run`'s data it is repaired.)"""
  workdir = str(tmp_path_factory.mktemp("two_processes") / "run")
  train_two_processes(workdir, ARGS)
  return workdir


@pytest.mark.parametrize("damage", ["arrays", "metrics"])
def test_two_processes_fall_back_past_a_damaged_checkpoint_together(
    tiny_two_process_run, tmp_path, damage):
  """Both processes find the newest checkpoint unusable (its arrays
  truncated, or its saved metrics garbage); both must go on from the same
  older step, and one moves it aside, as one process does
  (`test_checkpoint_recovery`). Each process moved it: the other failed
  with "checkpoints/4: No such file or directory" and a C++ abort."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_two_process_run, workdir)
  step_4 = os.path.join(workdir, "checkpoints", "4")
  if damage == "metrics":
    with open(os.path.join(step_4, "metrics", "metrics"), "w") as f:
      f.write("{not json")
  for root, _, files in os.walk(os.path.join(step_4, "state")):
    for name in files:
      if damage == "arrays" and os.path.basename(root) == "d":  # OCDBT data
        path = os.path.join(root, name)
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 3)
  logs = train_two_processes(workdir, ARGS + ["--config.train.num_steps=6"])
  # Both exited 0 (train_two_processes).
  assert "resumed from the checkpoint of step 2" in logs[0], logs[0][-3000:]
  from procs import checkpoint_steps  # pylint: disable=g-import-not-at-top
  assert 6 in checkpoint_steps(workdir)
  aside = os.listdir(os.path.join(workdir, "checkpoints-unreadable"))
  assert [name.split("-")[0] for name in aside] == ["4"], aside


@pytest.mark.parametrize("other", ["1", "1:none", "0:none"])
def test_two_processes_start_a_ratings_file_alone_from_the_same_factors(
    ratings_alone, two_process_run, tmp_path, other):
  """A ratings file alone: the `item_key` table starts at the SVD's item
  factors, which every process takes from process 0
  (`experiment._id_rows`): with process 1 computing other factors (as a
  host whose library rounds otherwise) or none (its SVD did not
  converge), 2 processes x 2 devices still reach the parameters of 1
  process x 4 devices. Where process 0 has none, both start at random
  rows, and finish (a process skipping the broadcast hung its run:
  helper R2). (Process 1's SVD ending late: `two_process_run`.)"""
  multi = str(tmp_path / "multi")
  logs = train_two_processes(multi, ratings_alone, other_factors_in=other,
                             timeout=300)
  if other == "0:none":  # random rows: no single run to match
    assert "starts at random" in logs[0], logs
    return
  assert_same_params(two_process_run[2], multi)
