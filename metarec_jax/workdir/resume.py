"""What may change between a checkpoint and the run that resumes it.

A change that alters the shapes of the saved parameters (the model, the
data's feature vocabularies, what the inner loop learns) cannot resume: it
is refused with the keys and the parameters that differ. Nor can one that
redraws the evaluation split (`SPLIT_KEYS`). Anything else (more
steps, logging, checkpoint cadence, the learning rate) is accepted and each
changed key is logged, so a resumed run's log says how it differs.

The learning-rate schedule keeps its length (`train.schedule_steps`) across
a resume unless that key is set: a run extended to more steps goes on at
the schedule's final rate, with no jump; a new length is an explicit choice
(`schedule_horizon`, `log_schedule_change`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from metarec_jax import config_io
from metarec_jax.errors import InputError
from metarec_jax.workdir import optim

log = logging.getLogger("metarec")

# Keys that never affect the saved state's shapes or its meaning.
_HARMLESS = ("train.num_steps", "train.eval_every_steps", "train.max_nonfinite",
             "train.prefetch", "train.input_workers", "train.cpu_devices",
             "train.chunk_tasks",
             "train.preempt_exit_code",
             "log.", "checkpoint.", "eval.batch_tasks", "meta.remat",
             "meta.dual_form", "meta.unroll", "data.root", "data.store",
             "mesh.")


# Keys a run keeps for its whole life, whatever a resume's config says:
# each fixes a constant of the model that the saved parameters were trained
# around (`model.global_mean`: the anchored models' level for an item
# without training ratings; the item offsets are learned relative to it;
# `meta.inner_lr_scale`: the inner rate, which also scales the anchored
# models' user bias; `train.select_on`: what the saved checkpoints'
# validation losses measure, compared across them;
# `model.table_row_multiple`: the rows of the saved tables;
# `model.id_init`: where the saved item-id table started;
# `model.cold_share`, `model.warm_min_support` and `model.cold_blend`:
# whether the saved parameters hold cold shares, the fewest support
# ratings, or a cold blend). A work
# directory written before such a key existed
# keeps the value it ran with (`config_defaults.BEFORE_KEY`).
RUN_CONSTANTS = ("model.global_mean", "meta.inner_lr_scale",
                 "train.select_on", "model.table_row_multiple",
                 "model.id_init", "model.cold_share",
                 "model.warm_min_support", "model.cold_blend")


def resumed_config(workdir: str) -> dict | None:
  """The flat `config.json` of the run in `workdir` where it saved a
  checkpoint (a resume), else None (a fresh start)."""
  folder = os.path.join(workdir, "checkpoints")
  if not (os.path.exists(os.path.join(workdir, config_io.WORKDIR_CONFIG))
          and os.path.isdir(folder)
          and any(name.isdigit() for name in os.listdir(folder))):
    return None
  return config_io.flat(config_io.to_dict(
      config_io.read_workdir_config(workdir)))


def keep_run_constants(config, workdir: str) -> None:
  """Sets `config`'s `RUN_CONSTANTS` to those of the run in `workdir` (its
  `config.json`), if it saved a checkpoint (a fresh start keeps the
  config's), logging each that the config changed."""
  saved = resumed_config(workdir) or {}
  for key in RUN_CONSTANTS:
    section, name = key.split(".")
    if key in saved and saved[key] != config[section][name]:
      log.info("%s stays %r, the run's own (the saved parameters were"
               " trained around it; %r applies to a new --workdir)", key,
               saved[key], config[section][name])
      config[section][name] = saved[key]


# Keys whose 0 a run resolves (the validation share from the data, the
# schedule's length from `train.num_steps`) and writes into config.json as
# resolved: a resume given 0 resolves them to the saved values.
RESOLVED_FROM_ZERO = ("eval.val_fraction", "train.schedule_steps")


def as_resumed(config, workdir: str) -> dict:
  """`config` (unchanged) as a resume in `workdir` runs it, as a dict: with
  the run's `RUN_CONSTANTS`, and its `RESOLVED_FROM_ZERO` values where
  `config` leaves them to be resolved. What the processes of a joined run
  compare: one given the run's first command and one given config.json
  (the resume's advice) differed in keys the user never set."""
  out = config_io.complete(config)  # (a copy)
  saved = resumed_config(workdir) or {}
  for key in RUN_CONSTANTS + RESOLVED_FROM_ZERO:
    section, name = key.split(".")
    if key in saved and (key in RUN_CONSTANTS or not out[section][name]):
      out[section][name] = saved[key]
  return config_io.to_dict(out)


# Keys that decide the protocol split (`experiment.protocol_spec`): which
# users are held out and which of their ratings are the validation and W
# queries. A run resumed with another split would go on training on users
# and ratings that its evaluation then holds out, and compare validations
# of different users: refused.
SPLIT_KEYS = ("eval.seed", "eval.new_user_fraction", "eval.val_fraction",
              "eval.min_ratings", "eval.max_ratings", "eval.max_tasks",
              "data.query_size")


def split_changes(changes: list[tuple[str, Any, Any]]) -> list[str]:
  """`KEY=OLD -> NEW` for every `SPLIT_KEYS` key among `changes`
  (`config_changes`; a saved `eval.val_fraction` of 0, from before the
  resolved share was recorded, meant the share resolved from the same
  data: not a change)."""
  out = []
  for key, old, new in changes:
    if key not in SPLIT_KEYS:
      continue
    if key == "eval.val_fraction" and not old:
      continue
    out.append(f"{key}={_show(old)} -> {_show(new)}")
  return out


def reader_config(workdir: str, overrides=(), *, own_split: bool = False):
  """The config `eval` and `export` read a run with: its `config.json` with
  `overrides` (`(dotted key, text)`), none of which may change a
  `RUN_CONSTANTS` key (`check_reader_overrides`) or, where the reader
  evaluates the run's own scenarios (`own_split`), redraw the evaluation
  split (`SPLIT_KEYS`: the scenarios would hold users and ratings the run
  trained on, and report a leak as a result; users of a ratings file are
  tasks of their own).

  Raises:
    InputError: a bad work directory or config, or such an override.
  """
  overrides = list(overrides)
  check_reader_overrides(overrides)
  config = config_io.read_workdir_config(workdir)
  saved = config_io.to_dict(config)  # before the overrides, which mutate
  config = config_io.apply_overrides(config, overrides)
  changed = split_changes(config_changes(saved, config_io.to_dict(config)))
  if changed and own_split:
    raise InputError(
        f"--config.{changed[0].split('=')[0]}: the change redraws the"
        f" evaluation split ({'; '.join(changed)}), whose users and ratings"
        " would then include some the run trained on; evaluate with the"
        " run's own split")
  return config


def refuse_edited(saved_config: dict, file_config: dict, *, step: int,
                  path: str) -> list[str]:
  """Raises InputError where a work directory's `config.json`
  (`file_config`) differs from the config its newest checkpoint (of
  `step`, `saved_config`) was trained with in a `SPLIT_KEYS` or
  `RUN_CONSTANTS` key, or holds a key metarec has not that the checkpoint
  lacks: `train` writes the one beside the other, and refuses such changes
  on resume, so the file was edited. Read with it, `eval` scored a split
  holding users the run trained on (exit 0), and a typo did nothing.
  (Older checkpoints may differ: runs resumed under an earlier metarec.)

  Returns:
    `KEY=OLD -> NEW` of the other `model.`, `meta.` and `data.` keys that
    differ (`model_changes`): a reader uses the file's values, which the
    checkpoint was not trained with (an edit, or a resume with changed
    settings that has not saved since)."""
  changes = config_changes(saved_config, file_config)
  edited = split_changes(changes) + [
      f"{key}={_show(old)} -> {_show(new)}" for key, old, new in changes
      if key in RUN_CONSTANTS]
  saved, on_file = config_io.flat(saved_config), config_io.flat(file_config)
  edited += [f"{key} (absent) -> {_show(on_file[key])}"
             for key in config_io.unknown_keys(file_config)
             if key not in saved]
  if edited:
    raise InputError(
        f"differs from the config of the newest readable checkpoint, of"
        f" step {step},"
        f" in what no resume changes ({'; '.join(edited)}: the"
        " checkpoint's -> this file's); the file was edited: put the"
        " checkpoint's values back", path=path)
  return model_key_changes(changes)


def check_reader_overrides(overrides) -> None:
  """Raises InputError where `eval` or `export` overrides a `RUN_CONSTANTS`
  key: the checkpoint's parameters were trained around the run's value."""
  for key, _ in overrides:
    if key in RUN_CONSTANTS:
      raise InputError(f"--config.{key}: a constant of the run's model (its"
                       " parameters were trained around the value in its"
                       " config.json); it cannot be changed here")


def config_changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
  """`(key, saved value, current value)` for every key that differs (a key
  the saved config predates has the value it ran with: `config_io.complete`)."""
  a, b = config_io.flat(config_io.complete(saved)), config_io.flat(current)
  missing = object()
  return [(k, a.get(k, missing), b.get(k, missing))
          for k in sorted(set(a) | set(b))
          if _norm(a.get(k, missing)) != _norm(b.get(k, missing))]


def model_key_changes(changes: list[tuple[str, Any, Any]]) -> list[str]:
  """`model_changes` of the `model.`, `meta.` and `data.` keys: what
  changes the model a reader scores (an `eval.` key shapes no
  parameter)."""
  return [c for c in model_changes(changes)
          if c.startswith(("model.", "meta.", "data."))]


def model_changes(changes: list[tuple[str, Any, Any]]) -> list[str]:
  """`KEY=OLD -> NEW` for every key among `changes` (`config_changes`)
  that may change the saved state's shapes (not `_HARMLESS`)."""
  return [f"{k}={_show(o)} -> {_show(n)}" for k, o, n in changes
          if not k.startswith(_HARMLESS)]


def _norm(v):
  return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def _show(v) -> str:
  return "(absent)" if type(v).__name__ == "object" else repr(_norm(v))


def check_resume(saved_config: dict, current_config: dict,
                 saved_shapes: dict[str, tuple],
                 current_shapes: dict[str, tuple], *, step: int) -> None:
  """Refuses a shape- or split-changing resume; logs the accepted changes.

  Raises:
    InputError: a `SPLIT_KEYS` key changed (named), or the parameters'
      shapes differ; the message lists the config keys that changed and
      the first parameters whose shapes differ.
  """
  changes = config_changes(saved_config, current_config)
  constant = [f"{key}={_show(old)} -> {_show(new)}"
              for key, old, new in changes if key in RUN_CONSTANTS]
  if constant:  # `keep_run_constants` set them from the config.json
    raise InputError(
        f"cannot resume the checkpoint of step {step}: the work directory's"
        f" {config_io.WORKDIR_CONFIG} differs from the config it was"
        f" trained with in a constant of the run ({', '.join(constant)}:"
        " the checkpoint's -> the file's); the file was edited: put the"
        " checkpoint's value back")
  split = split_changes(changes)
  if split:
    raise InputError(
        f"cannot resume the checkpoint of step {step}: the change redraws"
        f" the evaluation split ({', '.join(split)}), so the run would go on"
        " training on users and ratings its evaluation holds out. Use a new"
        " --workdir or undo the change.")
  shape_diffs = []
  for path in sorted(set(saved_shapes) | set(current_shapes)):
    old, new = saved_shapes.get(path), current_shapes.get(path)
    if old != new:
      shape_diffs.append(
          f"{path}: {old[0] if old else 'absent'} -> "
          f"{new[0] if new else 'absent'}")
  if shape_diffs:
    what = ", ".join(model_changes(changes)) or (
        "no config key: the data's vocabularies changed, or the checkpoint"
        " is of an earlier metarec whose model had other parameters")
    raise InputError(
        f"cannot resume the checkpoint of step {step}: the change alters the"
        f" shapes of the saved state ({what}; {'; '.join(shape_diffs[:4])}"
        f"{' ...' if len(shape_diffs) > 4 else ''}). Use a new --workdir or"
        " undo the change.")
  unknown = set(config_io.unknown_keys(current_config))
  for key, old, new in changes:
    if key in unknown and _show(old) == "(absent)":
      # A key no metarec reads, new since the checkpoint: a typo edited
      # into config.json, or a library caller's own.
      log.warning("resuming with a key metarec does not read: %s = %s"
                  " (nothing changes; a typo?)", key, _show(new))
      continue
    log.info("resuming with a changed config: %s %s -> %s", key, _show(old),
             _show(new))


def schedule_horizon(train_config, saved_config: dict | None) -> int:
  """The length of this run's learning-rate schedule, in steps.

  `train.schedule_steps` when set (> 0); else, on a resume, the length the
  saved run's schedule had (its `schedule_steps`, or its `num_steps` for a
  checkpoint written before the key existed), so that a resume with a
  larger `train.num_steps` does not re-stretch the cosine and make the
  rate jump; else (a fresh run) `train.num_steps`. (`config_reference`
  has made sure the key is not negative.)
  """
  if train_config.schedule_steps:
    return int(train_config.schedule_steps)
  if saved_config is not None:
    return optim.default_horizon(config_io.complete(saved_config).train)
  return int(train_config.num_steps)


def log_schedule_change(train_config, saved_config: dict, *, step: int,
                        horizon: int) -> None:
  """Says, in one line, what the schedule does where a resume changed
  `train.num_steps` or the schedule's length; silent otherwise."""
  saved = config_io.complete(saved_config).train
  old_horizon = optim.default_horizon(saved)
  num_steps = int(train_config.num_steps)
  old_rate = optim.host_learning_rate(saved, step, old_horizon)
  if horizon != old_horizon:
    log.info("train.schedule_steps %d -> %d, as asked: the learning rate at"
             " step %d changes from %.3g to %.3g", old_horizon, horizon, step,
             old_rate, optim.host_learning_rate(train_config, step, horizon))
  elif num_steps > int(saved.num_steps) and num_steps > horizon:
    log.info("train.num_steps %d -> %d: the learning-rate schedule keeps its"
             " length of %d steps (no jump), so the rate is %.3g from step"
             " %d on; to stretch the cosine over the %d steps instead, %s",
             int(saved.num_steps), num_steps, horizon,
             optim.host_learning_rate(train_config, horizon, horizon),
             max(step, horizon), num_steps,
             _schedule_advice(train_config, step, num_steps, old_rate))
  elif step < num_steps < min(int(saved.num_steps), horizon):
    # Shortened (helper L: "to finish sooner", the run ended at half the
    # peak rate, in silence).
    log.info("train.num_steps %d -> %d: the learning-rate schedule keeps its"
             " length of %d steps, so the run ends at rate %.3g, not at its"
             " final %.3g; to end the cosine at step %d instead, %s",
             int(saved.num_steps), num_steps, horizon,
             optim.host_learning_rate(train_config, num_steps, horizon),
             optim.host_learning_rate(train_config, horizon, horizon),
             num_steps,
             _schedule_advice(train_config, step, num_steps, old_rate))


def _schedule_advice(train_config, step: int, num_steps: int,
                     old_rate: float) -> str:
  """The key that fits the schedule to `num_steps`, and the rate's move at
  `step` that it makes."""
  new_rate = optim.host_learning_rate(train_config, step, num_steps)
  return (f"set --config.train.schedule_steps={num_steps} (the rate at step"
          f" {step} then {'jumps' if new_rate > old_rate else 'drops'} from"
          f" {old_rate:.3g} to {new_rate:.3g})")
