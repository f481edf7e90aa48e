"""A multi-process run that cannot form stops every process in one line.

Without `cluster`'s watchdog and count comparison, JAX waits 300 s and
then aborts with a C++ stack trace saying "another task died" (exit 134),
or lets a process given another --num_processes join and hang at the first
barrier for an hour.
"""

import os

from cli_run import assert_one_line_error
from conftest import config_path
from procs import metarec, run_together, start
from test_multiprocess import free_port
from metarec_jax import cluster

TINY = f"--config={config_path('tiny')}"


def test_a_process_that_waits_for_others_in_vain_says_what_to_check(
    tmp_path):
  workdir = tmp_path / "w"
  out = metarec("train", TINY, f"--workdir={workdir}",
                f"--coordinator_address=127.0.0.1:{free_port()}",
                "--num_processes=2", "--process_id=0", "--join_timeout=2",
                timeout=120)
  assert_one_line_error(
      out, "process 0: not all 2 processes joined the run at 127.0.0.1:")
  assert "within 2 s (--join_timeout): start every process with the same" \
      " --coordinator_address and --num_processes" in out.stderr
  # What a process id given twice, or one restarted alone, meets (helper
  # P: the line named only the processes that did not join); process 0's
  # own id is checked before (another run's coordinator on its port).
  assert "this --process_id was taken" not in out.stderr
  assert "where the others did join, this --process_id was taken" in (
      cluster._unjoined_problem("h:1", 2, 1, 5))  # pylint: disable=protected-access
  assert not os.path.exists(workdir)  # nothing was written


def _last_lines_of_two(tmp_path, port, flags, devices=(None, None),
                       **patches):
  """Starts process 0 and 1 of a run with their own `flags` (and the test
  `patches` of `procs.start`), waits for both to exit 2; yields (process
  id, last stderr line, stderr).

  Process 1 stops 2 s late, as a loaded machine may make it: it was then
  still connected when process 0, which hosts the coordination service,
  exited, and JAX aborted it with a C++ stack trace (exit -6).
  """
  ends = run_together([(
      ("train", TINY, f"--workdir={tmp_path / 'w'}",
       f"--coordinator_address=127.0.0.1:{port}", f"--process_id={i}",
       "--join_timeout=60", *extra),
      {"late_give_up_s": 2 * i, "devices": devices[i], **patches})
                       for i, extra in enumerate(flags)], timeout=120)
  for i, (returncode, err) in enumerate(ends):
    assert returncode == 2, err
    yield i, err.strip().splitlines()[-1], err


def test_processes_given_different_counts_all_stop(tmp_path):
  """Process 1 says 3 processes, process 0 (the coordinator) 2: JAX lets
  process 1 join process 0's run of 2."""
  port = free_port()
  for i, last, err in _last_lines_of_two(tmp_path, port, (
      ("--num_processes=2",), ("--num_processes=3",))):
    assert last == (
        f"metarec train: error: process {i}: the processes that joined the"
        f" run at 127.0.0.1:{port} were given different --num_processes"
        " (process 0: 2, process 1: 3; the run has 2, process 0's): give"
        " every process the same --num_processes"), err
  assert not os.path.exists(tmp_path / "w")


def test_sigterm_while_waiting_for_the_others_ends_the_process_at_once(
    tmp_path):
  """The wait is inside JAX's C++, where no Python handler runs: SIGTERM
  waited for the watchdog (up to --join_timeout) instead of ending it."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from procs import wait_for  # pylint: disable=g-import-not-at-top
  err = tmp_path / "stderr"
  proc = start("train", TINY, f"--workdir={tmp_path / 'w'}",
               f"--coordinator_address=127.0.0.1:{free_port()}",
               "--num_processes=2", "--process_id=0", "--join_timeout=120",
               stderr_path=err)
  try:
    wait_for(lambda: "joining the run at" in err.read_text(), proc=proc,
             timeout=120)
    time.sleep(1)  # inside initialize
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert time.perf_counter() - t0 < 30
    assert proc.returncode == -signal.SIGTERM
  finally:
    proc.kill()


def test_processes_given_different_configs_all_stop(tmp_path):
  """Process 1 with another `train.lr`: it trained silently (the run
  recorded with process 0's rate); a config of another shape aborted in
  gloo's C++ ("data size doesn't match", exit 134)."""
  port = free_port()
  for i, last, err in _last_lines_of_two(tmp_path, port, (
      ("--num_processes=2",),
      ("--num_processes=2", "--config.train.lr=0.5"))):
    assert last.startswith(
        f"metarec train: error: process {i}: process 1's config differs"
        " from process 0's (train.lr: 0.5 against 0.00"), err
    assert "give every process the same --config" in last
  assert not os.path.exists(tmp_path / "w")


def test_processes_with_different_device_counts_all_stop(tmp_path):
  """Process 0 with 2 CPU devices, process 1 with 1: both failed in a
  traceback ("cannot reshape array of size 3", exit 1) at the first array
  gathered across processes, or, where train.tasks_per_step did not divide
  by 3, blamed the batch size."""
  port = free_port()
  for i, last, err in _last_lines_of_two(
      tmp_path, port, (("--num_processes=2",), ("--num_processes=2",)),
      devices=(2, 1)):
    assert last == (
        f"metarec train: error: process {i}: the processes that joined the"
        f" run at 127.0.0.1:{port} have different numbers of devices"
        " (process 0: 2, process 1: 1): give every process as many (on CPU"
        " hosts the same --config.train.cpu_devices; on accelerator hosts as"
        " many visible accelerators)"), err
  assert not os.path.exists(tmp_path / "w")


def test_paths_and_input_threads_of_the_hosts_own_may_differ():
  from metarec_jax import cluster  # pylint: disable=g-import-not-at-top

  def problem(a, b):
    return cluster._config_problem(  # pylint: disable=protected-access
        1, {0: [cluster._flat(a)], 1: [cluster._flat(b)]})  # pylint: disable=protected-access

  a = {"data": {"root": "/mnt/a", "max_support": 32},
       "train": {"lr": 1.0, "input_workers": 0}, "distill": {"teacher": ""}}
  b = {"data": {"root": "/home/b", "max_support": 32},
       "train": {"lr": 1.0, "input_workers": 4}, "distill": {"teacher": ""}}
  assert problem(a, b) is None
  b["data"]["max_support"] = 64
  assert "data.max_support: 64 against 32" in problem(a, b)
  b["data"]["max_support"] = 32
  b["distill"]["teacher"] = "/runs/teacher"  # a teacher on one host only
  assert "distill.teacher: '(set)' against '(not set)'" in problem(a, b)


def test_a_process_of_an_older_metarec_is_named_as_such(monkeypatch):
  """Before configs were compared a process published its bare count."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from metarec_jax import cluster  # pylint: disable=g-import-not-at-top

  class Store:
    values = {"metarec/join/1": "2"}

    def key_value_set(self, key, value):
      self.values[key] = value

    def blocking_key_value_get(self, key, timeout_ms):
      del timeout_ms
      return self.values[key]

    def wait_at_barrier(self, name, timeout_ms):
      del name, timeout_ms

  monkeypatch.setattr(ocp.multihost, "get_jax_distributed_client", Store)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  problem = cluster._compare_processes("h:1", 2, 0, 60, [{"train": {}}])  # pylint: disable=protected-access
  assert problem == (
      "process 0: the processes that joined the run at h:1 run different"
      " versions of metarec (process 1 says only its --num_processes): run"
      " the same version on every host")


def test_process_0_on_a_port_another_run_serves_is_refused_at_once(
    tmp_path):
  """gRPC shares a port: process 0 started a second coordinator beside a
  running run's, and a process of the new run that reached the old one's
  aborted that run (exit 134); process 0 alone waited --join_timeout and
  blamed the other processes. A listener on IPv6 alone was not seen."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as other:
    other.bind(("", 0))
    other.listen()
    _assert_refused_at_once(tmp_path, other.getsockname()[1])
  try:
    other = socket.socket(socket.AF_INET6)
    other.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    other.bind(("::1", 0))
  except OSError:
    return  # no IPv6 loopback here
  with other:
    other.listen()
    _assert_refused_at_once(tmp_path, other.getsockname()[1])


def _assert_refused_at_once(tmp_path, port):
  import time  # pylint: disable=g-import-not-at-top
  t0 = time.monotonic()
  out = metarec("train", f"--config={config_path('tiny')}",
                f"--workdir={tmp_path / 'run'}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2", "--process_id=0", "--join_timeout=60")
  assert time.monotonic() - t0 < 50  # not the join timeout
  assert_one_line_error(out, f"--coordinator_address=127.0.0.1:{port}: port"
                        f" {port} is in use on this host (another run's"
                        " coordinator?)")
  assert not (tmp_path / "run").exists()


def test_a_resume_given_the_first_command_or_config_json_is_one_config(
    tmp_path):
  """Process 0 given the run's first command (`--config=FILE`) and process
  1 the resume's advice (config.json alone) were refused at the join for
  keys the user never set: the share and schedule length config.json holds
  resolved, a run constant (helper P). The processes compare each config
  as given and as its resume runs it (`resume.as_resumed`), and agree
  where one view does: processes given one --config whose work
  directories are not shared must reach the lock's "not shared" line, not
  a difference of keys they never set (reviewer R2)."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax import config_io
  from metarec_jax.workdir import resume
  first = config_io.complete(config_io.load_config_file(config_path("tiny")))
  first.model.table_row_multiple = 1024  # the key's default
  run = config_io.complete(config_io.to_dict(first))
  run.eval.val_fraction, run.train.schedule_steps = 0.3, 300
  run.model.table_row_multiple = 1  # a run from before the key
  workdir = str(tmp_path / "run")
  os.makedirs(os.path.join(workdir, "checkpoints", "100"))
  config_io.write_workdir_config(workdir, run)
  saved = config_io.read_workdir_config(workdir)

  def views(config, where=workdir):
    return [cluster._flat(c) for c in (  # pylint: disable=protected-access
        config_io.to_dict(config), resume.as_resumed(config, where))]

  def problem(a, b):
    return cluster._config_problem(1, {0: a, 1: b})  # pylint: disable=protected-access

  assert problem(views(first), views(saved)) is None
  assert first.eval.val_fraction == 0.0  # (the config itself unchanged)
  # Not shared: process 1 sees no checkpoint; as given, they agree.
  assert problem(views(first), views(first, str(tmp_path / "new"))) is None
  # A key the user did set still differs, named as resumed.
  other = config_io.complete(config_io.to_dict(first))
  other.train.lr *= 2
  said = problem(views(first), views(other))
  assert "train.lr" in said and "eval.val_fraction" not in said
  # (one view each, as an older version gives: as before)
  assert "eval.val_fraction: 0.3 against 0.0" in problem(
      [cluster._flat(config_io.to_dict(first))],  # pylint: disable=protected-access
      [cluster._flat(config_io.to_dict(saved))])  # pylint: disable=protected-access
  assert resume.as_resumed(first, str(tmp_path / "new")) == (
      config_io.to_dict(first))


def test_processes_of_the_last_version_still_compare_their_configs():
  """A process of the previous version publishes its config as given, in
  `config`, and compares that alone: the new views are published beside
  it (`config_resumed`), so that each side reads the other (a list where
  it read a dict was a TypeError at the join; a comparison of unlike
  views refused with no key named, reviewer R3)."""
  given = {"eval": {"val_fraction": 0.0}, "train": {"lr": 1.0}}
  resumed = {"eval": {"val_fraction": 0.3}, "train": {"lr": 1.0}}
  new = cluster._published([given, resumed])  # pylint: disable=protected-access
  assert new == {"config": cluster._flat(given),  # pylint: disable=protected-access
                 "config_resumed": cluster._flat(resumed)}  # pylint: disable=protected-access
  old = {"config": cluster._flat(resumed)}  # pylint: disable=protected-access

  def problem(a, b):
    return cluster._config_problem(1, {  # pylint: disable=protected-access
        i: [s[k] for k in cluster.VIEWS if k in s] for i, s in enumerate((a, b))})

  assert problem(new, {"config": cluster._flat(given)}) is None  # pylint: disable=protected-access
  assert "eval.val_fraction: 0.3 against 0.0" in problem(new, old)
  assert "eval.val_fraction: 0.0 against 0.3" in problem(old, new)
