"""Where a training run starts: the newest usable checkpoint, or a fresh
init; and how the loop saves.

A checkpoint records, beside the state, whether a stop cut the validation
of its step short (`validation_cut`): the resumed run does that validation
first, so no validated step is lost to a signal.
"""

from __future__ import annotations

import copy
import shlex
import logging
from typing import Any, NamedTuple

import jax
import numpy as np

from metarec_jax import config_io, runtime
from metarec_jax.errors import InputError
from metarec_jax.train import validation
from metarec_jax.train.guard import TrainingError
from metarec_jax.train.trainer import Trainer
from metarec_jax.workdir import checkpoint as ckpt_lib
from metarec_jax.workdir import resume

log = logging.getLogger("metarec")


class Start(NamedTuple):
  """What a run starts from (`restore_or_init`)."""

  state: Any
  step: int | None  # the restored step; None for a fresh init
  horizon: int  # the schedule's length in steps (`resume.schedule_horizon`)
  saved_config: dict | None  # the restored checkpoint's config
  validation_cut: bool  # a stop cut the restored step's validation short
  selection: dict | None  # `Selection.record()` at the restored step


class RunConfig:
  """Writes the run's `config.json` (the lead process only): a fresh start
  at once, a resume at its first save. A plain `metarec train
  --workdir=W` resumes with that file, so a resume whose overrides made it
  diverge, or that stopped before saving anything, must leave the config
  its checkpoints were trained with: written at its start, the next plain
  resume took its overrides again (`train.lr=1e30`, and diverged again)."""

  def __init__(self, workdir: str, config, data_files, *, active: bool,
               resumed: bool):
    self.args = (workdir, config)
    self.data_files = data_files
    self.pending = active
    self.unsaved = resumed  # on every process (`unrecorded`)
    if active and not resumed:
      self.saved()

  def unrecorded(self) -> str:
    """Flags of the keys this resume changed that `config.json` does not
    hold yet (nothing was saved since it started), " --config.KEY=VALUE"
    each, for the advice of a stop: a plain resume would drop them in
    silence (helper L: `nothing to train` after a changed num_steps)."""
    if not self.unsaved:
      return ""
    try:
      old = resume.resumed_config(self.args[0]) or {}
    except InputError:
      return ""
    new = config_io.flat(config_io.to_dict(self.args[1]))
    return "".join(f" {shlex.quote(f'--config.{k}={v}')}"
                   for k, v in new.items() if k in old and old[k] != v)

  def saved(self) -> None:
    """After a save of this start: writes the file once."""
    self.unsaved = False
    if self.pending:
      config_io.write_workdir_config(*self.args, data_files=self.data_files)
      self.pending = False


def report_stop(step: int, workdir: str, run_config: RunConfig, *,
                saved: bool, cut: bool, skipped: int) -> None:
  """The line of a run a signal stopped at `step`: whether it `saved` that
  step (its validation `cut` short), why not (`skipped`: the updates
  skipped as non-finite in a row), and the command that resumes it."""
  if saved:
    what = ("saved; its validation, cut short, is done on resume" if cut
            else "saved")
  elif skipped and step > 0:  # the state is the one the streak began from
    what = (f"nothing saved: its last {skipped} update(s) were skipped as"
            " non-finite; a resume goes on from the newest checkpoint, or"
            " from the start where there is none")
  elif step > 0:  # e.g. during the warm-up of a resumed run
    what = f"nothing new to save: the checkpoint of step {step} holds it"
  else:
    what = "before the first step: nothing to save"
  log.warning("stopped by a signal at step %d (%s); resume with `metarec"
              " train --workdir=%s%s`%s", step, what, shlex.quote(workdir),
              run_config.unrecorded(), "" if jax.process_count() == 1
              else " on every process, with its distributed flags")


def save(checkpointer: ckpt_lib.Checkpointer, step: int, state,
         config_record: dict, *, val_mae: float | None = None,
         params=None, validation_cut: bool = False,
         selection: dict | None = None, teacher: dict | None = None,
         run_config: RunConfig | None = None) -> None:
  """Saves `state`, with `params` (the validated shares) if given, and
  what a resume reads back: `validation_cut` (a stop cut this step's
  validation short), `selection` (`Selection.record()`), `teacher` (the
  distillation teacher's `pin`); then `run_config.saved()`."""
  if params is not None:
    state = state.replace(params=params)
  notes = {"validation_cut": validation_cut or None, "selection": selection,
           "teacher": teacher}
  try:
    checkpointer.save(step, state, config_record, val_mae=val_mae,
                      notes={k: v for k, v in notes.items() if v is not None})
  except ckpt_lib.CheckpointError as e:  # a non-finite state: not saved
    raise TrainingError(str(e)) from None
  if run_config is not None:
    run_config.saved()


def warn_short_schedule(train_config, horizon: int) -> None:
  """Warns where the warm-up takes half of the learning-rate schedule or
  more (a run shortened with `train.num_steps` alone): the rate then rises
  for most of the run and decays only at its end, or, with the warm-up at
  the schedule's length or beyond, never decays (`optim.learning_rate`
  caps the warm-up one step short of the horizon)."""
  warmup = int(train_config.warmup_steps)
  if horizon < 2 or 2 * warmup < horizon:
    return
  rises = min(warmup, horizon - 1)
  length = ("train.schedule_steps" if int(train_config.schedule_steps)
            else "train.num_steps")
  log.warning(
      "train.warmup_steps=%d is half or more of the %d-step learning-rate"
      " schedule (%s): the rate rises for %d steps and decays over the"
      " last %d only; lower train.warmup_steps (a tenth of the schedule"
      " is %d)", warmup, horizon, length, rises, horizon - rises,
      max(horizon // 10, 1))


def restore_or_init(trainer: Trainer, checkpointer: ckpt_lib.Checkpointer,
                    config_record: dict) -> Start:
  """Resume order: (1) the newest readable checkpoint gives the state, its
  step and therefore the sampler position, after checking that the config
  did not change shapes; (2) without any checkpoint, a fresh jitted init
  from `train.seed`. Then loads the distillation teacher, if any
  (`Trainer.load_teacher`: the restored checkpoint says which of its
  checkpoints).

  Returns:
    The `Start`.
  """
  train_config = trainer.config.train
  steps = checkpointer.steps()
  if not steps:
    horizon = resume.schedule_horizon(train_config, None)
    warn_short_schedule(train_config, horizon)
    trainer.load_teacher()
    return Start(trainer.init(trainer.rng()), None, horizon, None, False,
                 None)
  current_shapes = trainer.param_shapes()
  resolved = {}

  def check(step, record, saved_shapes):
    horizon = resume.schedule_horizon(train_config, record["config"])
    current = copy.deepcopy(config_record)
    current["train"]["schedule_steps"] = horizon
    resume.check_resume(record["config"], current, saved_shapes,
                        current_shapes, step=step)
    resolved.update(horizon=horizon, saved=record["config"])

  try:
    state, record, step = checkpointer.restore(trainer.abstract_state(),
                                               check=check)
  except ckpt_lib.CheckpointError as e:
    raise TrainingError(str(e)) from None
  log.info("resumed from the checkpoint of step %d in %s", step,
           checkpointer.directory)
  trainer.load_teacher(record.get("teacher"))
  # The checkpoint holds what its validation fitted; training goes on
  # without it.
  state = state.replace(params=validation.as_trained(state.params))
  streak = state.nonfinite_streak
  if int(runtime.to_host(streak)):
    # A resume, with other settings most often, gets its own
    # `train.max_nonfinite` tries: a saved streak stopped it at once.
    # (Placed, not computed: a finished run's resume compiles nothing.)
    state = state.replace(nonfinite_streak=jax.make_array_from_callback(
        streak.shape, streak.sharding,
        lambda index: np.zeros(streak.shape, streak.dtype)[index]))
  return Start(state, step, resolved["horizon"], resolved["saved"],
               bool(record.get("validation_cut")), record.get("selection"))


def curve_params(trainer: Trainer, checkpointer: ckpt_lib.Checkpointer,
                 step: int, last: Any) -> tuple[Any, int]:
  """(params, step) of the support curve a run writes at its end: those of
  its best validated checkpoint where that is not `step` (what `eval` and
  `export` use; the curve showed the last step's), else `last`, the last
  validated params, of `step`; also where the best cannot be read (a
  warning names it: the run is done, and `eval` will name it too)."""
  checkpointer.wait()  # the last save counted
  best = checkpointer.best()
  if best is None or best[0] == step:
    return last, step
  try:
    state, _, best_step = checkpointer.restore(trainer.abstract_state(),
                                               best[0])
  except ckpt_lib.CheckpointError as e:
    log.warning("the support curve is of step %d: %s", step, e)
    return last, step
  return state.params, best_step
