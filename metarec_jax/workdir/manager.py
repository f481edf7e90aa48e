"""Opening orbax's `CheckpointManager` on a work directory that may be
damaged or changing.

The manager reads every step's saved metrics (`STEP/metrics/metrics`, the
validation MAE) when it starts. Two things ended a command in a traceback
there: a damaged metrics file of any step (a JSON error, a value that is
no number), and a reader (`eval`, `export`) starting while a trainer
removed an old step (`checkpoint.keep`) between orbax's listing and its
read. The first costs only that step its metrics (one warning naming the
file; a trainer also moves the step aside), unless the step's own record
says what its validation was (`recorded_validation`: the best trained
step's always does); the second is opened again.
A step whose orbax step record is damaged is not listed (a trainer moves
it aside).
Where a step cannot be restored, `metadata_problem` names the orbax
metadata file that is missing or damaged.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import shutil
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from metarec_jax import atomic, runtime
from metarec_jax.workdir import orbax_logs
from metarec_jax.workdir.state_checks import CheckpointError

METRICS_FILE = ("metrics", "metrics")  # orbax's item folder and file name
STEP_RECORD = "_CHECKPOINT_METADATA"  # orbax's record of a step
ATTEMPTS = 5  # openings while steps vanish under the listing
UNREADABLE = "checkpoints-unreadable"  # beside `checkpoints/`
log = logging.getLogger("metarec")


class Manager(ocp.CheckpointManager):
  """orbax's manager, which takes the metrics of the steps in `damaged`,
  and metrics holding a NaN or an infinity, for absent: such a step counts
  as saved without a validation. (orbax ranked a NaN as it came: beside
  it, the best validated checkpoint could be deleted, and `eval` took the
  NaN step for the best.)"""

  def __init__(self, *args, damaged: frozenset[int] = frozenset(),
               unlisted: frozenset[int] = frozenset(),
               recovered: dict[int, dict] | None = None, **kw):
    self.damaged = damaged  # before orbax's constructor reads the metrics
    self.recovered = recovered or {}  # damaged, read from the step's record
    self.warned: set[int] = set()  # the metrics are read at every reload
    if unlisted:
      kw["options"] = dataclasses.replace(
          kw["options"], step_name_format=Without(unlisted))
    super().__init__(*args, **kw)

  def reload(self) -> None:
    """orbax's, listed again where a step vanishes while orbax lists the
    folder (it stats every step folder it found): a trainer beside this
    reader removed it (`checkpoint.keep`). `eval` failed with "No such
    file or directory" of a step it did not even read (helper L)."""
    for attempt in range(ATTEMPTS):
      try:
        return super().reload()
      except FileNotFoundError:
        if attempt + 1 == ATTEMPTS:
          raise
    return None

  def metrics(self, step: int) -> Any:
    """The metrics `step` was saved with (None: none, or removed)."""
    return self._get_metrics(step)

  def _get_metrics(self, step: int) -> Any:
    # orbax reads a step's metrics here for `metrics` and for the step's
    # metadata too, which every restore reads: a damaged file's JSON error
    # made its step unreadable ("cannot be read"), not only unvalidated.
    if int(step) in self.recovered:
      return self.recovered[int(step)]
    if int(step) in self.damaged:
      return None
    try:
      metrics = super()._get_metrics(step)
    except FileNotFoundError:  # removed since it was listed (as `reload`)
      return None
    bad = {k: v for k, v in (metrics or {}).items()
           if isinstance(v, float) and not math.isfinite(v)}
    if not bad:
      return metrics
    if int(step) not in self.warned:
      self.warned.add(int(step))
      log.warning("%s: %s; step %d counts as not validated", os.path.join(
          str(self.directory), str(step), *METRICS_FILE), ", ".join(
              f"`{k}` is {v}" for k, v in bad.items()), step)
    return None


def damaged_metrics(directory: str, metric: str) -> dict[int, str]:
  """`{step: path}` of the steps whose metrics file is not a JSON object
  whose `metric` is a number (or absent, or null); a step folder without
  metrics, or removed meanwhile, is fine."""
  if not os.path.isdir(directory):
    return {}
  damaged = {}
  for entry in sorted(os.listdir(directory)):
    if not entry.isdigit():
      continue
    path = os.path.join(directory, entry, *METRICS_FILE)
    try:
      with open(path, "rb") as f:
        raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
      continue
    try:
      metrics = json.loads(raw)
      ok = isinstance(metrics, dict) and (
          metrics.get(metric) is None
          or type(metrics[metric]) in (int, float))
    except ValueError:  # JSON, or not UTF-8
      ok = False
    if not ok:
      damaged[int(entry)] = path
  return damaged


def edited_metrics(directory: str, metric: str) -> dict[int, str]:
  """`{step: path}` of the steps whose metrics file reads, but whose
  `metric` its own record (`STEP/config`, `selection`) rules out: not the
  `trained` minimum where the step set it (`stale` 0), or below it where
  the step did not. One changed digit in a metrics file chose another
  best checkpoint for eval and export, in silence (helper D)."""
  edited = {}
  for entry in (sorted(os.listdir(directory))
                if os.path.isdir(directory) else ()):
    path = os.path.join(directory, entry, *METRICS_FILE)
    try:
      with open(path, "rb") as f:
        value = json.loads(f.read())[metric]
      with open(os.path.join(directory, entry, "config", "metadata"),
                "rb") as f:
        selection = json.loads(f.read())["selection"]
      trained, stale = float(selection["trained"]), int(selection["stale"])
      value = float(value)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
      continue  # no validation or no selection recorded, or damaged
    if entry.isdigit() and (value != trained if stale == 0
                            else value < trained):
      edited[int(entry)] = path
  return edited


def recorded_validation(directory: str, step: int) -> float | None:
  """A step's validation read from its own record (`STEP/config`), where
  its `selection` says it improved on every trained step before it
  (`stale` 0: its validation is the `trained` minimum it set), else None.
  Only a validated step has a metrics file to be damaged; the best
  trained step always improved, so it is recovered."""
  try:
    with open(os.path.join(directory, str(step), "config", "metadata"),
              "rb") as f:
      selection = json.loads(f.read()).get("selection")
    trained = selection["trained"]
    if selection["stale"] == 0 and type(trained) in (int, float) and (
        math.isfinite(trained)):
      return float(trained)
  except (OSError, ValueError, TypeError, KeyError, AttributeError):
    pass
  return None


def damaged_step_records(directory: str) -> dict[int, str]:
  """`{step: problem}` of the steps whose orbax step record
  (`STEP/_CHECKPOINT_METADATA`: its items' handlers and timestamps) is
  there but does not read. orbax reads every step's record as its manager
  opens: one of the wrong shape (`{"metrics": 5}`) ended `train` and `eval`
  in a traceback, one that is not JSON logged its content as an error at
  each read. A step without it reads (orbax takes the folder's time)."""
  if not os.path.isdir(directory):
    return {}
  found = {int(e): _record_problem(os.path.join(directory, e))
           for e in sorted(os.listdir(directory)) if e.isdigit()}
  return {step: problem for step, problem in found.items() if problem}


def _record_problem(step_dir: str) -> str | None:
  """What is wrong with a step's orbax record (None: it reads, or there
  is none, or the step was removed meanwhile)."""
  path = os.path.join(step_dir, STEP_RECORD)
  try:
    with open(path, "rb") as f:
      json.loads(f.read())
    ocp.metadata.get_step_metadata(step_dir)
  except (FileNotFoundError, NotADirectoryError):
    return None
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {str(e)[:120]}"
  return None


@dataclasses.dataclass(frozen=True)
class Without:
  """orbax's standard step folders (`checkpoints/STEP`) but for those of
  `steps` whose record is still damaged, which a manager given it never
  lists or reads (an `ocp.step.NameFormat`, orbax's protocol for naming
  and finding steps). A step saved again since (a trainer moved the
  damaged one aside) is listed: hidden, its new checkpoint was never
  deleted or found."""
  steps: frozenset[int]
  standard: Any = dataclasses.field(
      default_factory=ocp.step.standard_name_format)

  def build_name(self, step: int) -> str:
    return self.standard.build_name(step)

  def _hidden(self, base_path, step: int) -> bool:
    return step in self.steps and _record_problem(
        os.path.join(os.fspath(base_path), self.build_name(step))) is not None

  def find_all(self, base_path):
    return (m for m in self.standard.find_all(base_path)
            if not self._hidden(base_path, m.step))

  def find_step(self, base_path, step: int):
    if self._hidden(base_path, step):
      raise ValueError(f"step {step} is left out: its {STEP_RECORD} is"
                       " damaged")
    return self.standard.find_step(base_path, step)


# orbax's JSON files of a step (relative to its folder) that a restore
# reads, each with a key it holds (None: the run's record, whose keys
# `Checkpointer` checks, naming each); one that is missing or damaged failed
# as a bare TypeError, KeyError or JSONDecodeError naming no file.
_METADATA_FILES = {"state/_METADATA": "tree_metadata",
                   "state/array_metadatas/*": "array_metadatas",
                   "config/metadata": None}


def metadata_problem(step_dir: str) -> str | None:
  """The first of a step's orbax metadata files that is missing, not JSON
  or without its key, with what is wrong (None where each reads)."""
  for pattern, key in _METADATA_FILES.items():
    found = glob.glob(os.path.join(step_dir, pattern))
    if not found and "*" not in pattern:
      return f"{os.path.join(step_dir, pattern)} is missing"
    for path in sorted(found):
      try:
        with open(path, encoding="utf-8") as f:
          record = json.load(f)
        problem = (None if key is None or isinstance(record, dict)
                   and key in record else f"no {key!r}")
      except (OSError, ValueError) as e:
        problem = f"{type(e).__name__}: {str(e)[:120]}"
      if problem:
        return f"{path} is damaged (not the JSON orbax wrote: {problem})"
  return None


def move_aside(directory: str, steps: list[int]) -> None:
  """Moves the checkpoints of `steps` out of the way of new saves of the
  same steps, into `WORKDIR/checkpoints-unreadable/` (kept for
  inspection)."""
  dest = os.path.join(os.path.dirname(directory), UNREADABLE)
  for step in steps:
    os.makedirs(dest, exist_ok=True)
    target = os.path.join(dest, f"{step}-{int(time.time())}")
    shutil.move(os.path.join(directory, str(step)), target)
    log.warning("moved the checkpoint of step %d, which cannot be used, to"
                " %s", step, target)


def settle_unusable(directory: str, step: int, steps: list[int]) -> None:
  """After a restore from `step` that found `steps` unusable: moves those
  aside (`move_aside`). In a multi-process run every process has read
  the same folders; they must have chosen the same step (else the run
  would go on from two states: refused), and only the lead moves its
  unusable ones, once every process is done reading (each moving them
  failed the others with "No such file or directory")."""
  if jax.process_count() == 1:
    move_aside(directory, steps)
    return
  # The step only: a step the lead moved aside (`open_manager`) while
  # another process listed it is unusable to that one alone.
  lead = runtime.from_lead("checkpoint/restored", str(step))
  if lead != str(step):
    raise CheckpointError(f"process {jax.process_index()} restored step"
                          f" {step} of {directory}, process 0 step {lead}")
  runtime.sync_processes("checkpoint/read")
  if runtime.is_lead():
    move_aside(directory, steps)
  runtime.sync_processes("checkpoint/moved")


def open_manager(directory: str, metric: str,
                 make: Callable[..., Any], *, read_only: bool):
  """`make(damaged=, unlisted=)` (the manager's constructor, given the steps
  whose metrics are damaged and those whose orbax step record is) once
  those are named, again where a step folder vanished while it read them.
  A reader leaves the damaged steps in place (they count as not validated,
  or are not listed); a writer moves them aside, where its keeping of the
  best validated checkpoint would not delete them and its saves would not
  meet them (its other processes leave them to the first)."""
  damaged = damaged_metrics(directory, metric)
  edited = {s: p for s, p in edited_metrics(directory, metric).items()
            if s not in damaged}
  damaged.update(edited)
  recovered = {step: {metric: value} for step in damaged
               if (value := recorded_validation(directory, step)) is not None}
  for step, path in damaged.items():
    fate = ("counts as not validated" if read_only else "is moved aside")
    if step in recovered:  # a finished run's best was moved aside for it
      fate = (f"takes its validation {recovered[step][metric]:.6g} from its"
              " record, where it improved on every step before it"
              + ("" if read_only else ", and it is written back"))
    what = (f"its `{metric}` is not the validation its checkpoint's record"
            " (config/metadata) holds" if step in edited else
            f"not the metrics of a checkpoint (a JSON object with a number"
            f" `{metric}`)")
    log.warning("%s: damaged: %s; step %d %s", path, what, step, fate)
  logging.getLogger("absl").addFilter(orbax_logs.missing_step_record)
  unlisted = damaged_step_records(directory)
  for step, problem in unlisted.items():
    log.warning("%s: damaged: not orbax's record of a checkpoint (%s); step"
                " %d %s", os.path.join(directory, str(step), STEP_RECORD),
                problem, step, "is left out" if read_only else
                "is moved aside")
  if not read_only and runtime.is_lead():  # one process moves them
    for step, metrics in recovered.items():
      atomic.write_bytes(damaged[step], json.dumps(metrics).encode())
    move_aside(directory, sorted((set(damaged) - set(recovered))
                                 | set(unlisted)))
    damaged, recovered = {}, {}
  found = {"damaged": frozenset(damaged), "unlisted": frozenset(unlisted),
           "recovered": recovered}
  for _ in range(ATTEMPTS - 1):
    try:
      return make(**found)
    except FileNotFoundError as e:
      if not str(e.filename or "").startswith(directory):
        raise
  return make(**found)
