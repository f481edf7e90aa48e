"""Joining a multi-process run (`jax.distributed`), or failing in one line.

`jax.distributed.initialize` waits for every process to register with the
coordinator. Where one never comes (a process not started, a mistyped
`--num_processes`, two processes given the same `--process_id`, a wrong
`--coordinator_address`), JAX ends the process after its timeout with a
fatal C++ log and a stack trace whose message says "another task died"
(exit 134): the cause is nowhere in it, and the Python code cannot catch
it. So a watchdog ends the wait first, `join_timeout` seconds in, with one
line naming what to check and exit status 2; JAX's own timeout is set
later than ours. A process whose `--num_processes` differs from process
0's joins process 0's run (the coordinator's count wins): after joining,
the processes compare their counts, and their configs, and all stop where
they differ (a config of another shape otherwise aborted in gloo's C++
"data size doesn't match", and another `train.lr` trained silently, the
run recorded with process 0's).

Both stops end the process at once (`os._exit`), not by an exception: a
normal exit of one process of a joined run waits in JAX's shutdown
barrier for the others, minutes, and then aborts with a stack trace.
Where all stop at the comparison, they first leave the coordination
service together (`jax.distributed.shutdown`), so that process 0's exit
cannot abort one that has not yet said why.
"""

from __future__ import annotations

import atexit
import collections
import errno
import functools
import json
import logging
import os
import signal
import socket
import sys
import threading
import traceback

import jax

from metarec_jax import interrupts, liveness
from metarec_jax.errors import InputError
from metarec_jax.liveness import first_line

log = logging.getLogger("metarec")

# How much later than our watchdog JAX's own timeout fires.
JAX_TIMEOUT_MARGIN_S = 60
JOIN_TIMEOUT_S = 300  # JAX's default initialization timeout
# Seconds a process of a joined run may go unheard (`liveness`): under JAX's
# 100 s heartbeat timeout, whose abort it replaces with one line.
PEER_TIMEOUT_S = 60
_watch: liveness.Watch | None = None
# Config keys each host may set for itself: paths on its own disk (only
# whether they are set is compared: a teacher on one process and none on
# another would train different steps) and its input threads (a batch is a
# function of its step alone).
PER_HOST_PATHS = frozenset({"data.root", "data.store", "distill.teacher"})
PER_HOST_KEYS = PER_HOST_PATHS | {"train.input_workers", "train.prefetch"}


def cluster_detected() -> bool:
  """Whether the environment is a multi-process job JAX can join by itself
  (SLURM with several tasks, a multi-host Cloud TPU slice, Open MPI)."""
  env = os.environ
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
    return True
  if len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    return True
  return int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1


def check_process_flags(coordinator_address: str | None,
                        num_processes: int | None,
                        process_id: int | None) -> None:
  """Raises InputError (one line) where the multi-process flags cannot
  describe a run: JAX would raise a traceback, or wait for a process that
  can never join."""
  given = [f for f, v in (("--coordinator_address", coordinator_address),
                          ("--num_processes", num_processes),
                          ("--process_id", process_id)) if v is not None]
  if not given:
    return
  if len(given) < 3:
    raise InputError("a multi-process run needs --coordinator_address=HOST:"
                     "PORT, --num_processes=N and --process_id=I together"
                     f" (got only {', '.join(given)})")
  if num_processes < 1:
    raise InputError(f"--num_processes={num_processes} must be at least 1")
  if not 0 <= process_id < num_processes:
    raise InputError(f"--process_id={process_id} must be 0 to"
                     f" --num_processes-1 (--num_processes={num_processes})")
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise InputError(f"--coordinator_address={coordinator_address!r} must be"
                     " HOST:PORT (process 0's host, a free port)")


def init_distributed(coordinator_address: str | None = None,
                     num_processes: int | None = None,
                     process_id: int | None = None, *,
                     join_timeout: int = JOIN_TIMEOUT_S,
                     peer_timeout: float = PEER_TIMEOUT_S,
                     prog: str = "metarec train",
                     config: list[dict] | None = None) -> bool:
  """Joins a multi-process run (`jax.distributed.initialize`).

  With explicit arguments they are used as given; without, a cluster JAX
  recognises (`cluster_detected`) is joined with auto-detection; otherwise
  the run stays single-process. CPU processes exchange collectives through
  gloo. Returns whether the process joined a multi-process run.

  Where not every process has joined after `join_timeout` seconds, the
  process prints `{prog}: error: ...` (what to check) on stderr and exits
  with status 2 (see the module docstring: the wait cannot be interrupted
  any other way), and so does every process where their `num_processes`
  differ, or their `config` (views of the run's config as nested dicts,
  compared but for `PER_HOST_KEYS`: as given and as its resume runs it;
  processes agree where one view does). Once joined, a process that goes unheard for
  `peer_timeout` seconds ends the others with one line and exit status 1
  (`liveness`; a process that ends its run in order says so with
  `finished`). Raises InputError for flags that cannot describe a run.
  """
  check_process_flags(coordinator_address, num_processes, process_id)
  if join_timeout < 1:
    raise InputError(f"--join_timeout={join_timeout} must be at least 1"
                     " (seconds)")
  if not peer_timeout >= 2 * liveness.TICK_S:  # also NaN
    raise InputError(f"--peer_timeout={peer_timeout:g} must be at least"
                     f" {2 * liveness.TICK_S:g} (seconds)")
  explicit = coordinator_address is not None or num_processes is not None
  if not explicit and not cluster_detected():
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {"initialization_timeout": join_timeout + JAX_TIMEOUT_MARGIN_S}
  if explicit:
    kwargs.update(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id)
    log.info("process %d of %d: joining the run at %s (waiting up to %d s"
             " for every process, --join_timeout)", process_id, num_processes,
             coordinator_address, join_timeout)
  if explicit and process_id == 0:
    _refuse_busy_port(coordinator_address)
  watchdog = threading.Timer(join_timeout, _give_up, (
      prog, _unjoined_problem(coordinator_address, num_processes, process_id,
                              join_timeout)))
  watchdog.daemon = True
  watchdog.start()
  try:
    # SIGTERM stays JAX's afterwards: its preemption notifier.
    with interrupts.default_action(restore=(signal.SIGINT,)):
      jax.distributed.initialize(**kwargs)
  finally:
    watchdog.cancel()
  if explicit:
    problem = _compare_processes(coordinator_address, num_processes,
                                 process_id, join_timeout, config)
    if problem:
      _give_up(prog, problem)
  global _watch
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  _watch = liveness.Watch(
      ocp.multihost.get_jax_distributed_client(), jax.process_index(),
      jax.process_count(), timeout=peer_timeout,
      give_up=functools.partial(_give_up, prog),
      where=("the run" if coordinator_address is None else
             f"the run at {coordinator_address}")).start()
  # An exit that did not say `finished` stops counting (before JAX's own
  # exit handler, registered earlier, waits for the others).
  atexit.register(_watch.stop)
  return True


def finished() -> None:
  """Tells the other processes of a joined run that this one ended its run
  in order (trained or preempted), so that its exit is not taken for a
  death; nothing outside a joined run."""
  if _watch is not None:
    _watch.done()


def failed(prog: str, problem: str, status: int) -> None:
  """In a joined run, ends this process with `{prog}: error: {problem}` and
  exit status `status`, and the others with it (`liveness.Watch.fail`;
  process 0 last, `Watch.leave`); nothing outside a joined run (the caller
  reports the error). A normal exit would wait in JAX's shutdown barrier
  for processes inside a collective, then abort, and the others would say
  only that this one stopped answering."""
  if _watch is not None:
    _watch.fail(problem, status)
    _give_up(prog, problem, status, leave=True)


def failed_with_bug(prog: str, error: Exception) -> None:
  """In a joined run, ends this process after printing `error`'s traceback
  (a bug's report), and the others with one line naming it, exit status 1
  (`failed`); nothing outside a joined run (the caller raises it). Without
  it the others said only that this process stopped answering."""
  if _watch is not None:
    traceback.print_exception(error)
    failed(prog, f"a bug stopped it ({type(error).__name__}:"
           f" {first_line(error)}); its traceback is in its own output", 1)


def _compare_processes(coordinator_address: str, num_processes: int,
                       process_id: int, join_timeout: int,
                       config: list[dict] | None) -> str | None:
  """What is wrong where the processes were given different
  `--num_processes` or configs (None where nothing is).

  The coordinator's count is the run's, so a process given another count
  joins it all the same: every process publishes its own count and config
  in the coordination service's key-value store and reads the others', so
  that all of them stop, each naming the processes that disagree.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  client = ocp.multihost.get_jax_distributed_client()
  client.key_value_set(f"metarec/join/{process_id}", json.dumps(
      {"num_processes": num_processes, **_published(config)}))
  try:
    said = {i: json.loads(client.blocking_key_value_get(
        f"metarec/join/{i}", join_timeout * 1000))
            for i in range(jax.process_count())}
    counts = {i: int(s["num_processes"]) for i, s in said.items()
              if isinstance(s, dict)}
  except Exception as e:  # pylint: disable=broad-except
    # A process that joined and died before publishing its count (or an
    # older version that publishes none).
    return (f"process {process_id}: the processes that joined the run at"
            f" {coordinator_address} did not all say their --num_processes"
            f" within {join_timeout} s (--join_timeout): {first_line(e)}")
  if len(counts) < len(said):  # a bare count: metarec before 2026-12-04
    return (f"process {process_id}: the processes that joined the run at"
            f" {coordinator_address} run different versions of metarec"
            f" (process {min(set(said) - set(counts))} says only its"
            " --num_processes): run the same version on every host")
  if set(counts.values()) != {num_processes} or (
      jax.process_count() != num_processes):
    given = ", ".join(f"process {i}: {n}" for i, n in counts.items())
    problem = (f"process {process_id}: the processes that joined the run at"
               f" {coordinator_address} were given different"
               f" --num_processes ({given}; the run has"
               f" {jax.process_count()}, process 0's): give every process"
               " the same --num_processes")
  else:
    problem = _devices_problem(process_id, coordinator_address) or (
        _config_problem(process_id, {i: [s[k] for k in VIEWS if k in s]
                                     for i, s in said.items()}))
  # Every process has read every count before any leaves: process 0 hosts
  # the coordination service, and a process still reading when it exits
  # would see "connection reset" instead of the counts.
  try:
    client.wait_at_barrier("metarec/join/compared", join_timeout * 1000)
    if problem:
      # And all leave the service before any exits: a process still
      # connected when process 0 (the service) exits is aborted by JAX's
      # error polling before it can say why.
      jax.distributed.shutdown()
  except Exception as e:  # pylint: disable=broad-except
    if problem is None:  # a process died after publishing its count
      problem = (f"process {process_id}: not every process of the run at"
                 f" {coordinator_address} compared its --num_processes"
                 f" within {join_timeout} s (--join_timeout):"
                 f" {first_line(e)}")
  return problem


def _devices_problem(process_id: int,
                     coordinator_address: str | None) -> str | None:
  """The line naming the processes' device counts where they differ (None
  where every process has as many): the run's arrays are laid out as
  processes x local devices, and JAX failed in a traceback (exit 1) at
  the first array gathered across processes."""
  counts = collections.Counter(d.process_index for d in jax.devices())
  if len(set(counts.values())) < 2:
    return None
  given = ", ".join(f"process {i}: {n}" for i, n in sorted(counts.items()))
  return (f"process {process_id}: the processes that joined the run at"
          f" {coordinator_address} have different numbers of devices"
          f" ({given}): give every process as many (on CPU hosts the same"
          " --config.train.cpu_devices; on accelerator hosts as many"
          " visible accelerators)")


def _flat(config: dict, prefix: str = "") -> dict:
  """`{"train.lr": 0.002, ...}` of a nested config dict, less
  `PER_HOST_KEYS` (`PER_HOST_PATHS` only as set or not)."""
  out = {}
  for key, value in config.items():
    name = prefix + key
    if isinstance(value, dict):
      out.update(_flat(value, name + "."))
    elif name in PER_HOST_PATHS:
      out[name] = "(set)" if value else "(not set)"
    elif name not in PER_HOST_KEYS:
      out[name] = value
  return out


VIEWS = ("config", "config_resumed")  # (`_published`)


def _published(views: list[dict] | None) -> dict:
  """What a process says of its config at the join: `config`, its flat
  view as given (what every version since 2026-12-04 reads), and
  `config_resumed`, as its resume runs it (`init_distributed`'s views)."""
  return {name: _flat(view) for name, view in zip(VIEWS, views or [{}])}


def _config_problem(process_id: int, configs: dict[int, list[dict]]
                    ) -> str | None:
  """The line naming the keys where a process's config differs from
  process 0's (None where none does). Each process gives views of its
  config, as given and (where it says) as its resume runs it
  (`_published`); two agree where a view they both give does, and the
  last such view names the keys: as given, the resume's advice
  (config.json) differed from the run's first command in keys it
  resolves; as resumed, work directories not shared differed, which the
  lock names (`workdir.lock`)."""
  first = configs[0]
  for i, config in configs.items():
    pairs = list(zip(first, config))
    if any(a == b for a, b in pairs):
      continue
    base, config = pairs[-1]
    keys = sorted(k for k in set(base) | set(config)
                  if base.get(k) != config.get(k))
    shown = ", ".join(f"{k}: {config.get(k)!r} against {base.get(k)!r}"
                      for k in keys[:3])
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return (f"process {process_id}: process {i}'s config differs from"
            f" process 0's ({shown}{more}): give every process the same"
            " --config and --config.* overrides (each host's own paths"
            " and input threads may differ)")
  return None


def _refuse_busy_port(coordinator_address: str) -> None:
  """Raises InputError where another process listens on the port process
  0 is to serve the run's coordinator on (another run's): gRPC shares a
  port, so the new service started beside the old one, and a process of
  the new run that reached the old run's service aborted that run, exit
  134, while the new one trained on without a word."""
  port = int(coordinator_address.rpartition(":")[2])
  for family, anywhere in ((socket.AF_INET, "0.0.0.0"),
                           (socket.AF_INET6, "::")):
    try:
      probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
      continue  # (a host without this family)
    with probe:
      # (SO_REUSEADDR: a port a finished run left in TIME_WAIT is free.)
      probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      try:
        probe.bind((anywhere, port))
      except OSError as e:
        if e.errno != errno.EADDRINUSE:
          continue  # (not ours to judge: JAX reports what it meets)
        raise InputError(f"port {port} is in use on this host (another"
                         " run's coordinator?): give this run another port",
                         path=f"--coordinator_address={coordinator_address}"
                         ) from None


def _unjoined_problem(coordinator_address: str | None,
                      num_processes: int | None, process_id: int | None,
                      join_timeout: int) -> str:
  """The one line said when the processes did not all join in time."""
  if coordinator_address is None:
    return (f"the processes of the cluster job did not all join within"
            f" {join_timeout} s (--join_timeout): check that every task of"
            " the job started")
  return (f"process {process_id}: not all {num_processes} processes joined"
          f" the run at {coordinator_address} within {join_timeout} s"
          " (--join_timeout): start every process with the same"
          " --coordinator_address and --num_processes and its own"
          f" --process_id 0..{num_processes - 1} (process 0 first, on the"
          " coordinator's host)" + ("" if not process_id else
          "; where the others did join, this --process_id was taken: a"
          " process id given twice, or one process started again while the"
          " others ran, ends the run (JAX aborts the running ones), so"
          " start them all again"))


def _give_up(prog: str, problem: str, status: int = 2, *,
             leave: bool = False) -> None:
  """Ends the process from a watchdog thread: the main thread is inside
  JAX's C++ wait, where no exception reaches. `leave`: on a failure of a
  joined run, process 0 last (`liveness.Watch.leave`)."""
  for handler in logging.getLogger("metarec").handlers:
    handler.flush()
  print(f"{prog}: error: {problem}", file=sys.stderr, flush=True)
  if leave and _watch is not None:
    _watch.leave()
  os._exit(status)  # pylint: disable=protected-access
