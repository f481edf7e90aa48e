"""Checkpoints: one small module around orbax's `CheckpointManager`.

Layout: `WORKDIR/checkpoints/<step>/` with two items, `state` (the whole
`TrainState`, `StandardSave`) and `config` (`JsonSave` of the resolved
config with a format version). Saves are asynchronous; orbax writes each
step into a temporary folder and commits it by rename, so a folder without
its commit marker is an interrupted save, never a restorable one.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

FORMAT_VERSION = 1
log = logging.getLogger("metarec")


class CheckpointError(Exception):
  """No usable checkpoint where one was expected."""


class Checkpointer:
  """Saves and restores the train state of one work directory."""

  def __init__(self, workdir: str, *, keep: int = 1, every_steps: int = 0,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.every_steps = int(every_steps)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(int(keep), 1), create=not read_only,
        read_only=read_only, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """Steps of the complete checkpoints, oldest first."""
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step: int, state: Any, config: dict) -> None:
    """Starts an asynchronous save of `state` at `step`."""
    record = {"format_version": FORMAT_VERSION, "step": int(step),
              "config": config}
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(record)), force=True)

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[Any, dict, int]:
    """Restores `step` (default: the newest complete checkpoint).

    Args:
      abstract_state: the state's structure, `jax.ShapeDtypeStruct`s with
        the target shardings (so N-device checkpoints restore on M devices).

    Returns:
      (state, saved config record, step).
    """
    steps = self.steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
      raise CheckpointError(
          f"no checkpoint at step {step} in {self.directory}; there are:"
          f" {', '.join(map(str, steps))}")
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        config=ocp.args.JsonRestore()))
    return restored["state"], restored["config"], step

  def read_config(self, step: int) -> dict:
    """The config record saved with `step` (no arrays are read)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))
    return restored["config"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract(state: Any) -> Any:
  """`jax.ShapeDtypeStruct`s (with shardings) of a state or its eval_shape."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      state)


def remove(workdir: str) -> None:
  shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
