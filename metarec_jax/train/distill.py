"""Distillation: a student meta-trained toward a teacher's adapted predictions.

With `distill.teacher` (the work directory of a finished run, typically
MAML) every training batch's query ratings become

    target = (1 - weight) * rating + weight * teacher(query | support)

where `teacher(query | support)` is the teacher's prediction after its own
adaptation to the task's support set (its `meta.adapt`, inner loop and
learned inner parameters, from its best validated checkpoint, as `eval` uses;
the newest where none is validated). Each of the student's checkpoints
records which of the teacher's it was distilled toward (`Teacher.pin`): a
resume goes on from that one, not from a newer checkpoint of a teacher
still training, and says so where it is gone. For the squared
error that is exactly the loss `(1 - weight) * (pred - rating)^2 + weight *
(pred - teacher)^2` up to a constant, so the student (any algorithm:
typically an amortised one, one forward pass per user) is trained with the
extra loss toward the teacher without any change to the core or the train
step: the teacher is a transformation of the batch, jitted once per
support bucket. `{seed}` in the path is replaced by `train.seed`, so one
comparison spec pairs each student seed with its own teacher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import jax
import numpy as np

from metarec_jax import config_io, experiment, meta, runtime
from metarec_jax.errors import InputError
from metarec_jax.workdir import checkpoint as ckpt_lib
from metarec_jax.workdir import resume
from metarec_jax.workdir.state_checks import inspect_state
from metarec_jax.workdir.restore import load_state

log = logging.getLogger("metarec")

PyTree = Any


def targets_fn(model, meta_config: meta.MetaConfig, weight: float):
  """`(params, inner, tasks) -> tasks` with the blended query ratings."""

  def blend(params, inner, tasks):
    def one(task):
      adapted = meta.adapt(model.loss_fn, params, task["support"],
                           config=meta_config, inner=inner)
      # The teacher's fitted ratings, not its median map's: the student's
      # loss fits means too (and has a map of its own to serve through).
      return model.predict_unmapped(adapted, task["query"]["features"])

    teacher = jax.lax.stop_gradient(jax.vmap(one)(tasks))
    query = dict(tasks["query"])
    query["rating"] = ((1.0 - weight) * query["rating"]
                       + weight * teacher.astype(query["rating"].dtype))
    return {**tasks, "query": query}

  return blend


@dataclasses.dataclass
class Teacher:
  """A loaded teacher: `teacher(batch)` blends its predictions in."""

  workdir: str
  weight: float
  params: PyTree
  inner: PyTree | None
  fn: runtime.CompiledByShape
  # What the student's checkpoints record of it: the teacher's step and the
  # digest of the parameters it predicts with (`load`'s `pinned`).
  pin: dict

  def __call__(self, batch: PyTree) -> PyTree:
    return self.fn(self.params, self.inner, batch)

  def compile(self, batch: PyTree) -> None:
    """Compiles the targets for `batch`'s shapes (arrays or abstract), in
    the warm-up: compiled at the first batch of a bucket, it counted as a
    batch shape that escaped the buckets."""
    self.fn.compile(self.params, self.inner, batch)


def teacher_path(config) -> str:
  """`distill.teacher` with `{seed}` replaced by `train.seed` (`""`: none).

  Raises:
    InputError: the path holds a `{...}` field other than `{seed}`, or an
      unpaired brace (named with the key).
  """
  template = str(config.distill.teacher)
  try:
    return template.format(seed=int(config.train.seed))
  except (KeyError, IndexError, ValueError) as e:
    what = (f"unknown field {{{e.args[0]}}}" if isinstance(e, KeyError)
            else str(e).rstrip("."))
    raise InputError(f"config key distill.teacher={template!r}: {what}; the"
                     " only field it may hold is {seed} (a literal brace is"
                     " written {{ or }})") from None


def check(config) -> None:
  """The cheap check of `distill.teacher`, before a run creates anything.

  Raises:
    InputError: `teacher_path`'s, or the path is no run's work directory.
  """
  path = teacher_path(config)
  if path and not os.path.isfile(
      os.path.join(path, config_io.WORKDIR_CONFIG)):
    raise InputError(f"config key distill.teacher={path!r}: no config.json"
                     " there: not the work directory of a `metarec train`"
                     " run")


def _other_split(config, exp, teacher_exp) -> str | None:
  """How the teacher's split differs from the student's (None: the same
  user groups and training ratings)."""
  mine, theirs = exp.split, teacher_exp.split
  if (np.array_equal(mine.user_group, theirs.user_group)
      and np.array_equal(mine.train_positions, theirs.train_positions)):
    return None
  here, there = config_io.flat(config), config_io.flat(teacher_exp.config)
  keys = [f"{k}={there.get(k)!r} there, {here.get(k)!r} here"
          for k in resume.SPLIT_KEYS
          if k != "eval.val_fraction" and here.get(k) != there.get(k)]
  return ", ".join(keys) or "other data or validation share"


def _digest(params: PyTree, inner: PyTree | None) -> str:
  """SHA-256 of the teacher's parameters (their leaves' digests): which
  checkpoint a student was distilled toward, whatever its step number."""
  leaves, _ = inspect_state({"model": params, "inner": inner})
  return hashlib.sha256(json.dumps(leaves, sort_keys=True).encode()
                        ).hexdigest()


def _pinned_state(teacher_exp, path: str, mesh, pinned: dict | None):
  """`(state, pin)` of the teacher checkpoint `pinned` names (a resumed
  student's `Teacher.pin`: its step, the digest of its parameters), or
  None, with a warning, where the teacher no longer holds it: the step is
  gone (the teacher keeps `checkpoint.keep`), cannot be read, or holds
  other parameters (another teacher, or one trained again)."""
  if not pinned:
    return None
  step, of = int(pinned["step"]), f"the teacher {path}"
  steps = ckpt_lib.Checkpointer(path, read_only=True).steps()
  problem = f"its checkpoints: {', '.join(map(str, steps)) or 'none'}"
  if step in steps:
    try:
      state = load_state(teacher_exp, path, mesh, step=step, of=of)
    except InputError as e:  # damaged, or removed while it was read
      problem = f"its step {step} cannot be read: {e}"
    else:
      pin = {"step": step, "params": _digest(state.params["model"],
                                             state.params.get("inner"))}
      if pin["params"] == pinned["params"]:
        return state, pin
      problem = (f"its step {step} holds other parameters: another teacher,"
                 " or one trained again")
  log.warning("this run was distilled toward a teacher checkpoint (step %d)"
              " that %s no longer holds (%s): distilling from its default"
              " checkpoint from here on", step, path, problem)
  return None


def _agreed(pin: dict, path: str) -> dict:
  """`pin`, where process 0 distils from the same teacher checkpoint (every
  process of a joined run loads the teacher itself, from a path that may
  be its host's own copy).

  Raises:
    InputError: process 0's checkpoint is another step or holds other
      parameters: a host's copy differs, or the teacher saved while they
      started. Each process would otherwise distil toward its own teacher.
  """
  lead = json.loads(runtime.from_lead("distill teacher",
                                      json.dumps(pin, sort_keys=True)))
  if lead == pin:
    return pin
  raise InputError(
      f"process {jax.process_index()} distils from the teacher's step"
      f" {pin['step']} (parameters SHA-256 {pin['params'][:12]}), process 0"
      f" from its step {lead['step']} ({lead['params'][:12]}): every process"
      " must read the same teacher checkpoint (a host's copy of the teacher's"
      " folder differs, or the teacher saved while the processes started:"
      " start them again)", path=path)


def load(config, exp: experiment.Experiment, mesh,
         pinned: dict | None = None) -> Teacher | None:
  """The teacher named by `config.distill`, or None; from the checkpoint
  `pinned` (the `Teacher.pin` a resumed student's checkpoint recorded)
  where the teacher still holds it with the same parameters, else its
  default one (`load_state`), with a warning where that is another.

  Raises:
    InputError: the teacher cannot be read or reads features the student's
      batches lack.
  """
  path = teacher_path(config)
  if not path:  # no distillation
    return None
  weight = float(config.distill.weight)
  teacher_exp = experiment.build(config_io.read_workdir_config(path), path)
  if teacher_exp.implicit.enabled:
    raise InputError("the teacher is an implicit-feedback run: its scores"
                     " are logits, not ratings to blend into the student's"
                     " (distill.teacher takes a rating run)", path=path)
  have = {s.name: s for s in exp.tables.specs}
  missing = [s.name for s in teacher_exp.tables.specs
             if have.get(s.name) != s]
  if missing:
    raise InputError("the teacher reads features the student's batches lack"
                     f" or encode differently: {', '.join(missing)}",
                     path=path)
  other = _other_split(config, exp, teacher_exp)
  if other is not None:
    raise InputError("the teacher was trained on another split of the data"
                     f" ({other}): it learned from users and ratings the"
                     " student's validation and evaluation hold out. Distill"
                     " from a run with the student's data, eval.* split keys"
                     " and data.query_size", path=path)
  state, pin = _pinned_state(teacher_exp, path, mesh, pinned) or (
      load_state(teacher_exp, path, mesh, of=f"the teacher {path}"), None)
  step = int(runtime.to_host(state.step))
  params, inner = state.params["model"], state.params.get("inner")
  pin = _agreed(pin or {"step": step, "params": _digest(params, inner)},
                path)
  log.info("distilling from %s (step %d, weight %g)", path, step, weight)
  sharding = runtime.task_sharding(mesh)
  fn = jax.jit(targets_fn(teacher_exp.model, teacher_exp.meta_config, weight),
               out_shardings=sharding)
  return Teacher(workdir=path, weight=weight, params=params, inner=inner,
                 fn=runtime.CompiledByShape(fn, name="distill_targets"),
                 pin=pin)
