"""Checkpoints: one small module around orbax's `CheckpointManager`.

Layout: `WORKDIR/checkpoints/<step>/` with two items, `state` (the whole
`TrainState`, `StandardSave`) and `config` (`JsonSave` of the resolved
config with a format version). Saves are asynchronous. Orbax writes each
step into a temporary folder and commits it by rename, so a save killed
half-way leaves a temporary folder (removed at the next start), never a
checkpoint that looks complete. A complete checkpoint that cannot be used
is skipped for the previous one, loudly: one that cannot be read (a
truncated or deleted file), one whose arrays do not match the digests
recorded at save time (bytes changed in place), one holding a non-finite
value (written before metarec refused to save those).

Integrity (`state_checks`): `save` reads the state to the host once,
refuses a state with a NaN or an infinity, and records a SHA-256 digest of
every leaf in the `config` item, which orbax commits in the same rename as
the state; the restore recomputes them from the restored arrays. The
digests are of the values, not of orbax's files, so they do not depend on
how orbax lays the files out, on its asynchronous writer or on how many
processes wrote (every process holds the same replicated state; the primary
one writes the JSON item). Cost: one host copy and about 1.5 s per GB of
state hashed at each save and restore (on the 2-core test machine). A
checkpoint saved right after a validation carries its validation MAE
(orbax's metrics item); the best one is kept beside the newest ones.
Orbax splits the writing of a replicated array over its replicas only on
TPU (`_save_replicas_in_parallel`)."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
import os
import re
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
# (orbax builds its default array handler with this store; no public alias)
from orbax.checkpoint._src.metadata import array_metadata_store

from metarec_jax import integrity
from metarec_jax.errors import InputError, OutputError, cause_of, out_of_memory
from metarec_jax.meta import paths
from metarec_jax.workdir import manager as manager_lib
from metarec_jax.workdir import orbax_logs
from metarec_jax.workdir.state_checks import (
    CheckpointError, DamagedCheckpoint, OtherModel, StepUnusable, few,
    inspect_state, same_parameters, verify_restored)

FORMAT_VERSION = 1
VAL_MAE = "val_mae"  # the metric saved with a validated checkpoint
log = logging.getLogger("metarec")


@functools.cache
def _save_replicas_in_parallel() -> None:
  """Lets orbax split the writing of a replicated array across its
  replicas only on TPU.

  Orbax does it by default everywhere but where `JAX_PLATFORMS` names a
  GPU: each replica copies its own slice of the array to the host, which
  pays off where every device has its own link to host memory. On a CPU
  the arrays already are in host memory, and every slice is a small
  program compiled again at each save: 10 compilations per save of
  `configs/tiny.py` on 2 devices, 0.6 s of compiling per save (0.3 s with
  the test suite's compiler flags). The registry is orbax's global one:
  the last handler registered for `jax.Array` in a process is used.
  """
  logging.getLogger("absl").addFilter(orbax_logs.handler_override_notice)
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(
          use_replica_parallel=jax.default_backend() == "tpu",
          array_metadata_store=array_metadata_store.Store()),
      override=True)


def _handlers():
  _save_replicas_in_parallel()
  return {"state": ocp.StandardCheckpointHandler(),
          "config": ocp.JsonCheckpointHandler()}


class Checkpointer:
  """Saves and restores the train state of one work directory."""

  def __init__(self, workdir: str, *, keep: int = 1,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._in_flight: int | None = None  # the step of the unfinished save
    self._failed = False
    # Keeps the `keep` newest checkpoints and the best validated one (the
    # lowest validation MAE saved with it, see `save`); read-only: none of
    # the save options orbax would reset (warning about each).
    policies = ocp.checkpoint_managers
    keeping = None if read_only else policies.AnyPreservationPolicy([
        policies.LatestN(n=max(int(keep), 1)),
        policies.BestN(get_metric_fn=_validation_mae, reverse=True, n=1,
                       keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=keeping, best_fn=_validation_mae,
        best_mode="min", save_interval_steps=0 if read_only else 1,
        create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save,
        # Removes the temporary folders of saves that were killed.
        cleanup_tmp_directories=not read_only)
    if os.path.lexists(self.directory) and not os.path.isdir(self.directory):
      raise InputError("not a folder of checkpoints", path=self.directory)
    if read_only and not os.path.isdir(self.directory):
      self.manager = None
    else:
      if read_only:  # orbax warns about the read-only mode we asked for
        logging.getLogger("absl").addFilter(orbax_logs.read_only_notice)
      if not read_only:  # a failed save is reported once, in one line
        orbax_logs.quiet_failed_saves()
      # ... and about every save without validation metrics, which are the
      # norm between validations.
      logging.getLogger("absl").addFilter(orbax_logs.no_metrics_notice)
      self.manager = manager_lib.open_manager(
          self.directory, VAL_MAE, lambda **found: manager_lib.Manager(
              self.directory, options=options, item_handlers=_handlers(),
              **found), read_only=read_only)

  def steps(self) -> list[int]:
    """Steps of the committed checkpoints, oldest first."""
    if self.manager is None:
      return []
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return (self.steps() or [None])[-1]

  def best(self) -> tuple[int, float] | None:
    """(step, validation MAE) of the best validated checkpoint (the latest
    of equal MAEs, as `train.selection` keeps it), or None when no
    checkpoint was saved with a validation MAE."""
    validated = self.validated()
    if not validated:
      return None
    step = min(validated, key=lambda s: (validated[s], -s))
    return step, validated[step]

  def validated(self) -> dict[int, float]:
    """Step -> validation MAE of every kept checkpoint saved with one."""
    if self.manager is None:
      return {}
    out = {}
    for step in self.steps():
      mae = _validation_mae(self.manager.metrics(step) or {})
      if math.isfinite(mae):
        out[int(step)] = mae
    return out

  def save(self, step: int, state: Any, config: dict, *,
           val_mae: float | None = None, notes: dict | None = None) -> None:
    """Starts an asynchronous save of `state` at `step`, with the digest of
    every leaf in its config record.

    `val_mae`: the validation MAE of `state`, when it was just validated;
    the checkpoint with the lowest is kept beside the `keep` newest and is
    what `eval` and `export` use by default (`best`); a NaN or an infinity
    is saved as none. `notes`: entries of the config record that a resume
    reads back (`train.start.save`).

    Raises:
      CheckpointError: a leaf holds a NaN or an infinity (nothing is saved).
      OutputError: this save or the previous (asynchronous) one failed.
    """
    digests, bad = inspect_state(state)
    if bad:
      raise CheckpointError(
          f"step {step}: the state holds non-finite values in {len(bad)}"
          f" leaves ({few(bad)}); not saved")
    record = {"format_version": FORMAT_VERSION, "step": int(step),
              "config": config, "digests": {
                  "algorithm": integrity.ALGORITHM, "leaves": digests}}
    if set(notes or {}) & set(record):  # (a note never hides the record's)
      raise ValueError(f"notes {sorted(set(notes) & set(record))} clash")
    record.update(notes or {})
    metrics = (None if val_mae is None or not math.isfinite(val_mae)
               else {VAL_MAE: float(val_mae)})  # a NaN is no best
    with self._writing(int(step)):
      # The save before finishes first, so that its failure names its step
      # and this one's (a peer's collective failing) this step.
      self.manager.wait_until_finished()
      self._in_flight = None
      if int(step) in self.manager.all_steps():
        # Saved again with its validation (a stop had cut it short): orbax
        # writes no step twice. Lost to a crash here, the step is trained
        # again from the checkpoint before it, to the same state.
        self.manager.delete(int(step))
      self.manager.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          config=ocp.args.JsonSave(record)), metrics=metrics, force=True)
    self._in_flight = int(step)

  @contextlib.contextmanager
  def _writing(self, step: int | None = None):
    """Turns a failed save (a full disk: orbax raises from its background
    threads, at the next save or wait) into one `OutputError` naming the
    checkpoint and the cause, after removing the save's temporary folder;
    the committed checkpoints are untouched."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      orbax_logs.quiet_aborted_io()  # the sibling writes' failures
      failed = self._in_flight if self._in_flight is not None else step
      self._in_flight, self._failed = None, True
      self._abandon()
      steps = sorted(int(n) for n in os.listdir(self.directory)
                     if n.isdigit())
      newest = (f"; the newest checkpoint is still step {steps[-1]}"
                if steps else "; there is no checkpoint yet")
      raise OutputError(os.path.join(self.directory, str(failed)),
                        _cause(e) + newest) from None

  def _abandon(self) -> None:
    """After a failed save: joins orbax's threads, lets its abandoned
    writes finish now rather than at interpreter exit (where each prints a
    traceback), and removes the save's temporary folders."""
    try:
      self.manager.close()
    except Exception:  # pylint: disable=broad-except
      pass  # the failure it reports is the one being raised
    gc.collect()
    for name in os.listdir(self.directory):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def read_record(self, step: int) -> dict:
    """Step `step`'s config record (`CheckpointError`: unreadable)."""
    record = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]
    if not isinstance(record, dict) or "format_version" not in record:
      raise CheckpointError(f"step {step}: config item without a format"
                            " version")
    if not isinstance(record.get("config"), dict):  # a resume reads it
      raise CheckpointError(f"step {step}: config item without the run's"
                            " config")
    if record["format_version"] > FORMAT_VERSION:
      raise CheckpointError(
          f"step {step}: checkpoint format {record['format_version']} is"
          f" newer than this version of metarec ({FORMAT_VERSION})")
    return record

  def restore(self, abstract_state: Any, step: int | None = None, *,
              check=None) -> tuple[Any, dict, int]:
    """Restores `step`, or the newest checkpoint that can be read.

    Without `step`, a newest checkpoint that cannot be used (truncated or
    missing files, arrays that differ from the digests recorded at save
    time, a non-finite value) is reported with a warning naming it, the
    leaf and the one tried next, and moved aside; when none can be used it
    is an error, never a silent fresh start.

    Args:
      abstract_state: the state's structure as `jax.ShapeDtypeStruct`s with
        the target shardings (so a checkpoint of N devices restores on M).
      step: the step to restore (default: the newest readable one).
      check: `check(step, config_record, saved_param_shapes)`, called before
        any array is read; what it raises propagates (e.g. a refused config
        change) instead of counting as an unreadable checkpoint.

    Returns:
      (state, saved config record, step).
    """
    steps = self.steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    orbax_logs.quiet_aborted_io()
    candidates = [int(step)] if step is not None else list(reversed(steps))
    if step is not None and int(step) not in steps:
      raise CheckpointError(
          f"no checkpoint at step {step} in {self.directory}; there are:"
          f" {', '.join(map(str, steps))}")
    failures, unreadable = [], []
    for i, candidate in enumerate(candidates):
      try:
        record = self.read_record(candidate)
        shapes = self.saved_param_shapes(candidate)
      except Exception as e:  # pylint: disable=broad-except
        error = e
      else:
        if check is not None:
          check(candidate, record, shapes)
        try:
          same_parameters(shapes, _params(abstract_state))
          state = self.manager.restore(candidate, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state)))["state"]
          verify_restored(state, record, os.path.join(
              self.directory, str(candidate), "state"))
        except OtherModel as e:  # no other checkpoint would do either
          raise OtherModel(f"the checkpoint of step {candidate} {e}",
                           e.diff) from e
        except Exception as e:  # pylint: disable=broad-except
          error = e
        else:
          self._settle(candidate, unreadable)
          return state, record, candidate
      if out_of_memory(error):  # the machine's, not the checkpoint's fault
        raise error
      unreadable.append(candidate)
      folder = os.path.join(self.directory, str(candidate))
      problem = (str(error) if isinstance(error, DamagedCheckpoint)
                 else f"cannot be read ({_read_problem(error, folder)})")
      failures.append(f"step {candidate} {problem}")
      older = candidates[i + 1] if i + 1 < len(candidates) else None
      if older is not None:
        log.warning("the checkpoint of step %d in %s %s; falling back to the"
                    " checkpoint of step %d", candidate, self.directory,
                    problem, older)
    if step is not None:  # asked for: not a reason to read another
      others = tuple(s for s in reversed(steps) if s != int(step))
      raise StepUnusable(
          f"the checkpoint of {failures[0][:400]}; "
          + (f"the other checkpoints: {', '.join(map(str, others))}"
             if others else "there is no other checkpoint"), others)
    raise CheckpointError(
        f"no usable checkpoint in {self.directory} (tried "
        + "; ".join(f[:300] for f in failures) + "); refusing to start from"
        " scratch over it: move the folder away to start anew")

  def _settle(self, step: int, unusable: list[int]) -> None:
    """Moves unusable checkpoints aside (`manager.settle_unusable`)."""
    manager_lib.settle_unusable(self.directory, step, unusable)
    if unusable:
      self.manager.reload()

  def saved_param_shapes(self, step: int) -> dict[str, tuple]:
    """`{path: (shape, dtype)}` of the saved `params` (no array is read)."""
    meta = self.manager.item_metadata(step)["state"]
    tree = getattr(meta, "tree", meta)
    params = tree["params"]
    return {p: (tuple(l.shape), str(l.dtype)) for p, l in
            zip(paths.leaf_paths(params), jax.tree.leaves(params))}

  def wait(self) -> None:
    """Waits for the save in flight; raises `OutputError` if it failed."""
    if self.manager is not None and not self._failed:
      with self._writing():
        self.manager.wait_until_finished()
      self._in_flight = None

  def close(self) -> None:
    """Finishes the save in flight (raising `OutputError` if it failed)."""
    if self.manager is None or self._failed:
      return  # a failed save has been reported and cleaned up
    self.wait()
    self.manager.close()


def _params(state: Any) -> Any:
  """The `params` of a train state (or of a `{"params": ...}` dict)."""
  return state["params"] if isinstance(state, dict) else state.params


def _cause(error: Exception) -> str:
  """The operating system's words for a failed orbax write (tensorstore
  reports `[os_error_code='28']`), else the error's first line."""
  text = str(error)
  code = re.search(r"os_error_code='?(\d+)", text)
  if code:
    return os.strerror(int(code.group(1)))
  if isinstance(error, OSError):
    return cause_of(error)
  first = text.splitlines()[0] if text else type(error).__name__
  return first[:200]


def _read_problem(error: Exception, folder: str) -> str:
  """Why the checkpoint in `folder` cannot be read: `manager.metadata_problem`,
  else the innermost error of the chain (tensorstore's names the array file
  and byte range; the outer one ends in its spec's repr), first line."""
  if missing := manager_lib.metadata_problem(folder):
    return missing
  root = error
  for _ in range(10):
    inner = root.__cause__ or root.__context__
    if inner is None or not str(inner):
      break
    root = inner
  text = str(root).splitlines()[0] if str(root) else ""
  text = text.split(" See full TensorStore details")[0]
  return f"{type(root).__name__}: {text[:300]}" if text else type(
      root).__name__


def _validation_mae(metrics: dict) -> float:
  """The metric that ranks checkpoints (lower is better); +inf where the
  metrics hold none (raised in orbax, it failed every later save)."""
  value = metrics.get(VAL_MAE)
  return (float(value) if type(value) in (int, float)
          and math.isfinite(value) else math.inf)
