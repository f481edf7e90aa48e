"""Reading a work directory's meta-parameters back (eval, export)."""

from __future__ import annotations

import logging
import os
import time

from metarec_jax import config_io, experiment, runtime
from metarec_jax.data import implicit
from metarec_jax.errors import InputError
from metarec_jax.models.anchored import COLD_SHARE, NEW_ITEM_PRIOR, SHARE
from metarec_jax.models.calibration import MEDIAN_OFFSETS
from metarec_jax.models.cold_blend import (COLD_FACTOR, NEW_ITEM_MIN_SUPPORT,
                                           WARM_MIN_SUPPORT)
from metarec_jax.workdir import checkpoint as ckpt_lib
from metarec_jax.workdir.criterion import criterion_name
from metarec_jax.workdir import optim, resume
from metarec_jax.workdir import state as state_lib

log = logging.getLogger("metarec")


_ATTEMPTS = 3  # choices of the default checkpoint beside a running trainer


def _default_step(checkpointer: ckpt_lib.Checkpointer,
                  exp: experiment.Experiment, of: str = "") -> int | None:
  """The best validated checkpoint's step, else the newest (None where
  there is none); logs which (`of`: whose, where not the command's own
  run: no --step picks another)."""
  best = checkpointer.best()
  who, hint = ((f"{of}: ", "") if of else
               ("", "; --step=N picks another"))
  if best is None:
    log.info("%susing the newest checkpoint (none was validated)%s", who,
             hint)
    return checkpointer.latest_step()
  log.info("%susing the best validated checkpoint: step %d (validation"
           " %s %.4f; newest: step %s)%s", who, best[0],
           criterion_name(implicit.is_implicit(exp.store)), best[1],
           checkpointer.latest_step(), hint)
  return best[0]


def _vanishes(path: str, wait: float = 2.0) -> bool:
  """Whether `path` is gone, or goes within `wait` seconds: a trainer
  removing a step (`checkpoint.keep`) deletes its items one by one, and a
  reader that meets a step without one of them has met a removal, not
  damage."""
  deadline = time.monotonic() + wait
  while os.path.exists(path):
    if time.monotonic() > deadline:
      return False
    time.sleep(0.05)
  return True


def load_state(exp: experiment.Experiment, workdir: str, mesh, *,
               step: int | None = None, of: str = "") -> state_lib.TrainState:
  """The train state of `step` in `workdir`.

  Default: the best validated checkpoint (the lowest validation loss saved
  with one, see `Checkpointer.save` and `workdir.criterion`), else
  the newest readable one; the log says which (of whose run: `of`, where
  it is not the command's own, as a distillation's teacher).

  Raises:
    InputError: there is no such checkpoint.
  """
  chosen = step
  for attempt in range(_ATTEMPTS):
    checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
    listed = set(checkpointer.steps())
    try:
      if not attempt:
        _refuse_edited(checkpointer, sorted(listed), workdir)
      # As the default says its own (not of a step it has not: the error
      # then names those it has).
      if chosen is not None and chosen in listed and not attempt:
        log.info("%susing the checkpoint of step %d%s",
                 f"{of}: " if of else "", chosen, "" if of else " (--step)")
      step = chosen if chosen is not None else _default_step(checkpointer,
                                                             exp, of)
      state, _, _ = checkpointer.restore(
          state_lib.abstract(exp.model, exp.meta_config,
                             optim.outer_optimizer(
                                 optim.hyperparams(exp.config.train)),
                             runtime.replicated(mesh)), step)
      # Its serving values were fitted by a validation, or are the
      # untested starting ones (train.eval_every_steps=-1).
      fitted = (("validated", "") if step in checkpointer.validated()
                else ("starting", "; the checkpoint was never validated"))
      break
    except ckpt_lib.CheckpointError as e:
      if step in listed and _vanishes(
          os.path.join(checkpointer.directory, str(step))):
        # Not damage: a trainer running in the work directory removed it
        # (`checkpoint.keep`) while it was being read.
        if chosen is None and attempt + 1 < _ATTEMPTS:
          log.info("the checkpoint of step %d was removed while it was"
                   " read (a trainer is running here): choosing again",
                   step)
          continue
        now = sorted(checkpointer.steps(), reverse=True)
        raise InputError(
            f"the checkpoint of step {step} was removed while it was read"
            " (a trainer running in this work directory keeps only"
            " checkpoint.keep of them); the checkpoints now:"
            f" {', '.join(map(str, now)) or 'none'}", path=workdir) from e
      # eval and export never read another checkpoint than the one they
      # say: a damaged one is an error that names the others to pick
      # instead.
      hint = ("; --step=N reads another" if not of and isinstance(
          e, ckpt_lib.StepUnusable) and e.others else "")
      changed = (_model_overrides(exp, workdir)
                 if isinstance(e, ckpt_lib.OtherModel) else "")
      if changed:  # the run is fine: the config given is not its own
        raise InputError(
            f"the overrides change the run's model ({changed}), and the"
            f" checkpoint of step {step} holds the run's own ({e.diff}):"
            " read it with the config it was trained with",
            path=workdir) from e
      raise InputError(str(e) + hint, path=workdir) from e
    finally:
      checkpointer.close()
  served = served_values(state.params)
  if "share_new_items" in served:
    log.info("the checkpoint uses %.2f of its learned part for existing"
             " items and %.2f for new items (its %s shares%s)",
             served["share_existing_items"], served["share_new_items"],
             *fitted)
  if "cold_share_new_items" in served:
    log.info("a user without ratings is served %.2f of it for existing"
             " items and %.2f for new items (its %s cold shares%s)",
             served["cold_share_existing_items"],
             served["cold_share_new_items"], *fitted)
  if "cold_factor_new_items" in served:
    log.info("a user without ratings is served its predictions at %.2f of"
             " their distance from the training mean for existing items and"
             " %.2f for new items (its %s cold blend%s)",
             served["cold_factor_existing_items"],
             served["cold_factor_new_items"], *fitted)
  if "new_item_prior" in served:
    log.info("its user biases weigh a support rating of a new item 1/%g of"
             " an existing item's (its %s model.new_item_prior%s)",
             served["new_item_prior"], *fitted)
  if served.get("new_item_min_support", 1.0) > 1:
    log.info("a user's ratings of new items move their biases from %g of"
             " them on (its %s model.new_item_min_support%s)",
             served["new_item_min_support"], *fitted)
  if served.get("warm_min_support", 1.0) > 1:
    log.info("a user's ratings move their model from %g of them on (its %s"
             " model.warm_min_support%s)", served["warm_min_support"],
             *fitted)
  if "median_map_new_items" in served:
    log.info("it serves through the median map (model.calibration=median)"
             " for existing items: %s, for new items: %s",
             *("yes" if served[f"median_map_{kind}_items"]
               else "no (identity)" for kind in ("existing", "new")))
  return state


def _refuse_edited(checkpointer: ckpt_lib.Checkpointer, steps: list[int],
                   workdir: str) -> None:
  """What the run's config.json says (before any override), checked
  against the newest readable checkpoint's own record (of `steps`), which
  a hand edit of the file does not change (`resume.refuse_edited`); a
  difference that changes the model but not the split is named in a
  warning."""
  if config_io.workdir_config_file(workdir) is None:
    return  # a library caller's checkpoints alone: no file to check
  for newest in reversed(steps):  # the newest readable
    try:
      record = checkpointer.read_record(newest)
    except Exception:  # pylint: disable=broad-except
      continue
    path = os.path.join(workdir, config_io.WORKDIR_CONFIG)
    others = resume.refuse_edited(
        record["config"], config_io.to_dict(config_io.read_workdir_config(
            workdir)), step=newest, path=path)
    if others:  # a hand edit changed the figures in silence
      log.warning("%s differs from the config of step %d in %s (the step's"
                  " -> the file's): the file's values are used", path,
                  newest, "; ".join(others))
    return


def _model_overrides(exp: experiment.Experiment, workdir: str) -> str:
  """`KEY=OLD -> NEW, ...` of the keys where the config given (the
  `--config.KEY=VALUE` of `eval` or `export`) changes the model against
  the run's `config.json` (`model.`, `meta.` and `data.` keys: an
  `eval.` override shapes no parameter); "" where it changes none."""
  return ", ".join(resume.model_key_changes(resume.config_changes(
      config_io.to_dict(config_io.read_workdir_config(workdir)),
      config_io.to_dict(exp.config))))


def served_values(params) -> dict:
  """What a checkpoint's validation fitted for serving, as plain values:
  `share_existing_items` and `share_new_items` (`train.shares`), the
  same of `cold_share` (`model.cold_share=validated`) and of
  `cold_factor` (`model.cold_blend=validated`),
  `new_item_prior` (`train.new_item_prior`), `new_item_min_support` and
  `warm_min_support` (`train.min_support`),
  `median_map_existing_items` and `median_map_new_items` (whether each
  kind is served through the median map); only those the model has."""
  model = params["model"]
  out = {}
  for name, key in ((SHARE, "share"), (COLD_SHARE, "cold_share"),
                    (COLD_FACTOR, "cold_factor")):
    if model.get(name) is not None:
      out[f"{key}_existing_items"], out[f"{key}_new_items"] = (
          float(v) for v in runtime.to_host(model[name]).tolist())
  for name in (NEW_ITEM_PRIOR, NEW_ITEM_MIN_SUPPORT, WARM_MIN_SUPPORT):
    if model.get(name) is not None:
      out[name] = float(runtime.to_host(model[name]))
  offsets = model.get(MEDIAN_OFFSETS)
  if offsets is not None:
    kept = (runtime.to_host(offsets) != 0).any(axis=-1).tolist()
    out["median_map_existing_items"], out["median_map_new_items"] = (
        bool(k) for k in kept)
  return out


def workdir_at(spec: str) -> tuple[str, int | None]:
  """A tool's `DIR` or `DIR@STEP` argument as `(workdir, step)`, step None
  for `load_state`'s default checkpoint."""
  workdir, _, step = spec.partition("@")
  if not step:
    return workdir, None
  try:
    return workdir, int(step)
  except ValueError:
    raise InputError(f"{spec}: the step after '@' is not an integer"
                     f" ({step!r})") from None


def open_checkpoint(workdir: str, step: int | None = None):
  """`(experiment, mesh, train state)` of `workdir`'s checkpoint `step`
  (default as `load_state`), for the tools that score a run in other ways
  than `metarec eval`."""
  config = config_io.read_workdir_config(workdir)
  exp = experiment.build(config, workdir)
  mesh = runtime.make_mesh()
  return exp, mesh, load_state(exp, workdir, mesh, step=step)
