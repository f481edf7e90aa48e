"""One trainer per work directory (`metarec_jax/workdir/lock.py`), with
real `metarec` processes: a second trainer is refused with one line and
changes nothing; `kill -9` frees the lock; `eval` reads without it."""

import json
import os
import signal
import socket

import pytest

from conftest import config_path
from procs import metarec, start, wait_for

from metarec_jax.workdir import lock as workdir_lock

TINY = [f"--config={config_path('tiny')}"]


def snapshot(workdir: str) -> dict:
  """Every file and folder under `workdir` with its size and mtime."""
  out = {}
  for root, dirs, files in os.walk(workdir):
    for name in dirs + files:
      path = os.path.join(root, name)
      st = os.lstat(path)
      out[os.path.relpath(path, workdir)] = (st.st_size, st.st_mtime_ns)
  return out


def holder_pid(workdir: str) -> int | None:
  """The pid the lock file names (None before a holder wrote it)."""
  try:
    with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
      return json.loads(f.read() or "{}").get("pid")
  except (FileNotFoundError, ValueError):
    return None


def stopped(pid: int) -> bool:
  """Whether every thread of `pid` has stopped (a SIGSTOP is delivered
  asynchronously: a thread in a write finishes it first)."""
  states = []
  for task in os.listdir(f"/proc/{pid}/task"):
    try:
      with open(f"/proc/{pid}/task/{task}/stat") as f:
        states.append(f.read().rsplit(")", 1)[1].split()[0])
    except FileNotFoundError:  # the thread exited since the listing
      pass
  return all(state in ("t", "T") for state in states)


def test_second_trainer_is_refused_and_kill_9_frees_the_lock(tmp_path):
  workdir = str(tmp_path / "work")
  holder = start("train", *TINY, f"--workdir={workdir}",
                 "--config.train.num_steps=100000",
                 stderr_path=str(tmp_path / "holder.log"))
  try:
    wait_for(lambda: holder_pid(workdir) == holder.pid, proc=holder,
             timeout=300, interval=0.2)
    # Frozen, the holder writes nothing while the second trainer runs.
    os.kill(holder.pid, signal.SIGSTOP)
    wait_for(lambda: stopped(holder.pid), timeout=60)
    before = snapshot(workdir)
    out = metarec("train", *TINY, f"--workdir={workdir}",
                  "--config.train.lr=0.5")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"metarec train: error: {workdir}: in use by"
                               " another trainer"), lines
    assert f"host {socket.gethostname()}, pid {holder.pid}" in lines[0]
    assert snapshot(workdir) == before
  finally:
    holder.kill()  # SIGKILL, also to a stopped process
    holder.wait(timeout=60)
  # The kernel released the flock with the killed holder's descriptor.
  with workdir_lock.WorkdirLock(workdir):
    assert holder_pid(workdir) == os.getpid()
  assert holder_pid(workdir) is None  # a release empties the record


def test_every_process_of_a_refused_run_exits_2(tmp_path):
  """Process 0 tries the lock; the others get its verdict and stop too."""
  workdir = str(tmp_path / "work")
  os.makedirs(workdir)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  with workdir_lock.WorkdirLock(workdir):
    before = snapshot(workdir)
    procs = [start("train", *TINY, f"--workdir={workdir}",
                   f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", devices=2,
                   stderr_path=str(tmp_path / f"p{i}.log")) for i in (0, 1)]
    try:
      codes = [p.wait(timeout=300) for p in procs]
    finally:
      for p in procs:
        p.kill()
    assert snapshot(workdir) == before
  logs = [(tmp_path / f"p{i}.log").read_text() for i in (0, 1)]
  assert codes == [2, 2], logs
  for log in logs:
    assert log.strip().splitlines()[-1].startswith(
        f"metarec train: error: {workdir}: in use by another trainer (host"
        f" {socket.gethostname()}, pid {os.getpid()}"), log


def test_eval_reads_a_locked_workdir(tiny_metasgd_run):
  with workdir_lock.WorkdirLock(tiny_metasgd_run):
    out = metarec("eval", f"--workdir={tiny_metasgd_run}")
  assert out.returncode == 0, out.stderr


def test_lock_excludes_a_second_descriptor_until_released(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirInUse, match=f"pid {os.getpid()}"):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()
