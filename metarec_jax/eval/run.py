"""`metarec eval`: a work directory's checkpoint on the protocol's scenarios."""

from __future__ import annotations

import logging
import os
from typing import Iterable

import jax
import numpy as np

from metarec_jax import atomic, config_io, experiment, runtime
from metarec_jax.data.splits import SCENARIOS
from metarec_jax.eval import (predictions_file, task_files, tensorboard,
                              verdicts)
from metarec_jax.eval import support_curve as curves
from metarec_jax.eval.evaluate import Evaluator
from metarec_jax.errors import OutputError, cause_of
from metarec_jax.eval.user_file import read_new_users
from metarec_jax.workdir.restore import load_state, served_values
from metarec_jax.workdir import resume

log = logging.getLogger("metarec")


def evaluate_workdir(workdir: str, *, step: int | None = None,
                     overrides: Iterable[tuple[str, str]] = (),
                     ratings: str | None = None,
                     write_tasks: str | None = None,
                     support_curve: bool = True) -> dict:
  """Evaluates a work directory's checkpoint on the protocol's scenarios.

  Args:
    workdir: a `metarec train` work directory.
    step: the checkpoint step (default: the best validated one,
      else the newest).
    overrides: `(dotted key, text)` config overrides.
    ratings: a ratings file in the dataset's input format; its users are
      evaluated as new users (scenarios UC and UIC; W and IC are empty)
      instead of the store's own scenarios.
    write_tasks: a folder to write each scenario's support and query
      ratings to, in the dataset's input format, and the query predictions
      of the model and the baselines (`eval.predictions_file`).
    support_curve: also write the query MAE against support-set size of
      every scenario to `WORKDIR/eval/support_curve.json` (see
      `eval.support_curve`).

  Returns:
    `{"step": N, "scenarios": {"W": {...}, "UC": ..., "IC": ..., "UIC": ...},
    "warnings": [...], "served": {...}}` with the keys of docs/design.md;
    an empty scenario has `tasks: 0` and null metrics; `warnings`
    (`eval.verdicts`) says where the model lost to the item-mean +
    user-bias baseline and which scenarios have too few tasks; `served`
    what the checkpoint's validation fitted for serving
    (`workdir.restore.served_values`).

  Raises:
    InputError: a bad work directory, config, checkpoint or ratings file.
  """
  config = resume.reader_config(workdir, overrides, own_split=not ratings)
  # The run's records hold its own evaluation: not other users' (--ratings)
  # nor a what-if under overrides (it replaced the run's support curve).
  what_if = _what_if(workdir, config)
  own = not ratings and not what_if
  if write_tasks:  # refused before the evaluation, not after it
    _check_task_folder(write_tasks)
  exp = experiment.build(config, workdir, log=log.info)
  if ratings:  # read before the checkpoint: a bad file fails fast
    tasksets, interacted = read_new_users(exp.store, ratings,
                                          experiment.protocol_spec(config))
    log.info("%s: %d UC and %d UIC tasks of new users", ratings,
             len(tasksets["UC"]), len(tasksets["UIC"]))
  else:
    tasksets = {name: exp.split.scenarios[name] for name in SCENARIOS}
    interacted = None
  _note_long_supports(tasksets, int(config.data.max_support))
  mesh = runtime.make_mesh()
  state = load_state(exp, workdir, mesh, step=step)
  evaluator = Evaluator(exp, mesh, interacted=interacted,
                        tasksets=tasksets)
  kept = {} if write_tasks else None
  results = evaluator.evaluate(state.params, SCENARIOS, tasksets=tasksets,
                               keep=kept)
  step = int(runtime.to_host(state.step))
  if write_tasks:
    files = {f"{name}/{predictions_file.FILE_NAME}":
             evaluator.predictions_text(p, tasksets[name])
             for name, p in kept.items()}
    task_files.write_tasks(write_tasks, tasksets, exp.store,
                           extra={"ratings": ratings, "step": step},
                           files=files)
    log.info("wrote the tasks' support and query ratings to %s", write_tasks)
  unwritten = []  # the run's own records that could not be added
  if not own:
    log.info("the run's TensorBoard and %s are left as they are: this"
             " evaluation is %s", curves.FILENAME, "of --ratings" if ratings
             else f"a what-if (--config.{what_if[0]})")
  if own:
    _record(unwritten, "the evaluation's TensorBoard scalars",
            lambda: tensorboard.write(workdir, step, results,
                                      active=jax.process_index() == 0))
  curve = []  # (the record, once evaluated)
  if support_curve and own:
    _record(unwritten, "the support curve", lambda: curve.append(
        curves.evaluate_and_write(
            workdir, evaluator, state.params, tasksets, step=step,
            seed=int(config.eval.seed), write=jax.process_index() == 0)))
  warnings = unwritten + verdicts.warnings_for(
      results, model_config=exp.model_config,
      rating_range=exp.store.rating_range) + verdicts.curve_warnings(
          curve[0] if curve else None, model_config=exp.model_config)
  if not any(int(m.get("tasks") or 0) for m in results.values()):
    warnings.append(verdicts.no_tasks(ratings))
  else:
    store = exp.store

    def existing_counts():  # per rating: only where the warning is due
      existing = ~np.asarray(store.item_new)[np.asarray(store.items)]
      owner = np.repeat(np.arange(store.num_users), store.counts())
      return np.bincount(owner[existing], minlength=store.num_users)

    warnings += [w for w in (
        verdicts.no_existing_item_tasks(
            results, None if ratings else existing_counts,
            (int(config.eval.min_ratings), int(config.eval.max_ratings)),
            ratings),
        verdicts.no_new_item_tasks(
            results, np.asarray(store.item_new), ratings,
            config.data.generic.new_item_col
            if config.data.name == "generic" else None)) if w]
  if ratings:
    seen = verdicts.trained_users(
        ratings, np.concatenate([tasksets[n].users for n in SCENARIOS]),
        exp.split.train_counts() > 0, np.asarray(exp.store.user_ids))
    if seen:
      warnings.append(seen)
  for line in warnings:
    log.warning("%s", line)
  return {"step": step, "scenarios": results, "warnings": warnings,
          "served": served_values(state.params)}


def _check_task_folder(out: str) -> None:
  """InputError where `task_files.write_tasks` would refuse `out` (not an
  earlier task folder) or could not make it (a file where a folder above
  it goes: "File exists", status 1), so that neither comes after the
  whole evaluation."""
  out = os.path.abspath(out)
  atomic.refuse_other(
      out, lambda p: os.path.exists(os.path.join(p, task_files.TASKS_MANIFEST)),
      "exists and is not a task folder written by --write_tasks; choose"
      " another folder")
  atomic.refuse_file_in_the_way(out, named="--write_tasks")


def _record(unwritten: list[str], what: str, write) -> None:
  """Runs `write`, which adds to the run's own records in its work
  directory; where that cannot be written (a read-only copy of a run, a
  full disk), says so in `unwritten` instead of failing: the evaluation
  itself is complete (`--write_tasks`, asked for, still fails)."""
  try:
    write()
  except (OutputError, OSError) as e:
    where = (str(e) if isinstance(e, OutputError) else
             f"cannot write {e.filename or 'the work directory'}:"
             f" {cause_of(e)}")
    # Logged with the evaluation's other warnings (evaluate_workdir).
    unwritten.append(f"{what} not added to the work directory ({where})")


# Overrides that say how an evaluation runs or where its files are, not
# what it measures: with these alone it is still the run's own evaluation
# (a lower eval.batch_tasks is how one that ran out of memory gets done).
HOW_KEYS = ("eval.batch_tasks", "eval.catalog_block", "data.root",
            "data.store", "data.buckets")
HOW_SECTIONS = ("train", "checkpoint", "log", "mesh")


def _what_if(workdir: str, config) -> list[str]:
  """The keys by which `config` (the run's with overrides) would measure
  something else than the run's own config does."""
  changes = resume.config_changes(
      config_io.to_dict(config_io.read_workdir_config(workdir)),
      config_io.to_dict(config))
  return [key for key, _, _ in changes if key not in HOW_KEYS
          and key.partition(".")[0] not in HOW_SECTIONS]


def _note_long_supports(tasksets: dict, max_support: int) -> None:
  """Logs the tasks whose support holds more than `max_support` ratings:
  eval adapts on all of them, as the protocol does, while `export` and
  `serve` adapt a user on the newest `max_support`, so for those users
  the served predictions differ from the scored ones."""
  sizes = {name: ts.support_sizes() for name, ts in tasksets.items()
           if len(ts)}
  over = {name: int((s > max_support).sum()) for name, s in sizes.items()}
  if any(over.values()):
    most = max(int(s.max()) for s in sizes.values())
    log.info("%s task(s) adapt on more than data.max_support=%d support"
             " ratings (up to %d), as the protocol does; export and serve"
             " adapt a user on the newest %d, so they serve those users"
             " other predictions than scored here (an export with"
             " --config.data.max_support=%d or more serves what is scored)",
             ", ".join(
                 f"{n} {k:,} of {len(tasksets[n]):,}" for n, k in over.items()
                 if k), max_support, most, max_support, most)

