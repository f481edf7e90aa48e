"""One trainer per work directory (`metarec_jax/workdir/lock.py`), with
real `metarec` processes: a second trainer is refused with one line and
changes nothing; `kill -9` frees the lock; `eval` reads without it."""

import errno
import json
import os
import signal
import socket

import pytest

from conftest import config_path
from procs import metarec, start, wait_for

from metarec_jax.errors import InputError, OutputError
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


def test_a_failed_first_start_leaves_no_folder_it_made(tmp_path):
  # A typo in the data used to leave the new work directory holding an
  # empty train.lock. Folders that existed stay (with their lock file).
  from cli_run import assert_one_line_error, metarec_here  # pylint: disable=g-import-not-at-top
  data = tmp_path / "shop"
  data.mkdir()
  (data / "ratings.csv").write_text("user,item,rating\nalice,mug,4\nbob,pen\n")
  flags = ["--config.data.name=generic", f"--config.data.root={data}"]
  (tmp_path / "runs").mkdir()
  for workdir in (tmp_path / "runs" / "a" / "b", tmp_path / "runs"):
    out = metarec_here("train", f"--config={config_path('default')}",
                       f"--workdir={workdir}", *flags)
    assert_one_line_error(out, "ratings.csv:3: 2 field(s)")
  assert os.listdir(tmp_path / "runs") == [workdir_lock.LOCK_FILE]
  assert sorted(os.listdir(tmp_path)) == ["runs", "shop"]


def test_a_lock_on_a_file_removed_since_it_was_opened_is_taken_again(
    tmp_path, monkeypatch):
  # A start that removes its unused folder (`remove_if_unused`) unlinks the
  # lock file while holding it; a trainer that opened the file just before
  # would otherwise lock the removed file, and a third one the new file.
  workdir = tmp_path / "run"
  first = workdir_lock.WorkdirLock(str(workdir))
  first.acquire()
  first.remove_if_unused(str(workdir))  # the folder goes too
  assert not workdir.exists()
  stale = os.open(tmp_path / "removed", os.O_RDWR | os.O_CREAT)
  os.unlink(tmp_path / "removed")
  first.release()
  second = workdir_lock.WorkdirLock(str(workdir))
  opened, real = [stale], second._open  # pylint: disable=protected-access
  monkeypatch.setattr(second, "_open",
                      lambda: opened.pop() if opened else real())
  second.acquire()
  assert not opened  # the stale descriptor was tried, then the real file
  with pytest.raises(workdir_lock.WorkdirInUse):
    workdir_lock.WorkdirLock(str(workdir)).acquire()
  second.release()


def test_a_folder_at_the_lock_file_is_an_input_error(tmp_path):
  (tmp_path / workdir_lock.LOCK_FILE).mkdir()
  with pytest.raises(InputError, match="train.lock: not a file: a work"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()


def test_a_lock_record_that_cannot_be_written_names_the_file(tmp_path,
                                                             monkeypatch):
  # A full disk: `pwrite`'s OSError names no file ("No space left on
  # device" alone, exit 1).
  def full(*_):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(workdir_lock.os, "pwrite", full)
  with pytest.raises(OutputError, match="cannot write .*train.lock: No"
                     " space left on device"):
    with workdir_lock.hold(str(tmp_path / "new" / "run"),
                           made=str(tmp_path / "new")):
      pass
  monkeypatch.undo()
  # What the start made is removed (an empty train.lock in a new work
  # directory was left), and the lock is not held.
  assert os.listdir(tmp_path) == []
  workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()
