"""What makes a saved state usable: finite values, the digests recorded at
save time, the parameters of this model.

`checkpoint.Checkpointer` runs these on every save (`inspect_state`: a
state with a NaN or an infinity is refused) and on every restore
(`verify_restored`, `same_parameters`); they read arrays through the host
and know nothing of orbax.
"""

from __future__ import annotations

from typing import Any

import jax

from metarec_jax import integrity, runtime
from metarec_jax.meta import paths


class CheckpointError(Exception):
  """No usable checkpoint where one was expected, or a state not to save."""


class StepUnusable(CheckpointError):
  """The checkpoint of the step asked for cannot be used; `others` are the
  work directory's other steps, newest first (one may be asked for
  instead)."""

  def __init__(self, message: str, others: tuple[int, ...]):
    super().__init__(message)
    self.others = others


class DamagedCheckpoint(CheckpointError):
  """A checkpoint that was read but must not be used (its message says
  why: a digest mismatch or a non-finite value)."""


class OtherModel(CheckpointError):
  """A checkpoint of a model of other parameters or shapes than the
  config's: a problem of the config given, the same for every checkpoint
  of the run. `diff` names the parameters that differ."""

  def __init__(self, message: str, diff: str = ""):
    super().__init__(message)
    self.diff = diff


def inspect_state(state: Any) -> tuple[dict[str, str], list[str]]:
  """`({leaf path: SHA-256 digest}, [paths of non-finite leaves])` of a
  (replicated) state, read through the host."""
  named = [(p, runtime.to_host(x)) for p, x in
           zip(paths.leaf_paths(state), jax.tree.leaves(state))]
  digests = {p: integrity.array_digest(a) for p, a in named}
  return digests, integrity.nonfinite(named)


def few(names: list[str], n: int = 3) -> str:
  """The first `n` of `names` and how many more, for one-line messages."""
  return ", ".join(names[:n]) + (f" and {len(names) - n} more"
                                 if len(names) > n else "")


def verify_restored(state: Any, record: dict, where: str) -> None:
  """Raises `DamagedCheckpoint` if a restored `state` differs from the
  digests in its config `record` or holds a non-finite value (checkpoints
  written before digests were recorded are checked for the latter only).
  `where`: the state's folder, for the message."""
  digests, bad = inspect_state(state)
  saved = (record.get("digests") or {}).get("leaves")
  if saved is not None:
    changed = [p for p in sorted(set(saved) | set(digests))
               if saved.get(p) != digests.get(p)]
    if changed:
      raise DamagedCheckpoint(
          f"is corrupt: {where} restores {len(changed)} leaves that differ"
          f" from the digests recorded at save time ({few(changed)})")
  if bad:
    raise DamagedCheckpoint(
        f"holds non-finite values in {len(bad)} leaves ({few(bad)})")


def same_parameters(saved: dict[str, tuple], params: Any) -> None:
  """Raises `OtherModel` naming the parameters that the checkpoint
  (`saved`: `{path: (shape, dtype)}` of its params) and this model
  (`params`) do not share, or whose shapes differ: orbax's own error
  ("tree structures do not match") names no leaf. Every checkpoint of a
  run holds the same parameters (a resume that changes them is refused),
  so no other checkpoint would do either.
  """
  current = set(paths.leaf_paths(params))
  missing, extra = sorted(current - set(saved)), sorted(set(saved) - current)
  if missing or extra:
    what = "; ".join(
        f"{label} {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
        for label, names in (("the model has", missing),
                             ("the checkpoint has", extra)) if names)
    raise OtherModel(
        f"holds the parameters of another model ({what}; a checkpoint of an"
        " earlier metarec or another config): train it again in a new"
        " --workdir", diff=what)
  # Checked before orbax reads: its own error names no leaf, and the reads
  # it abandons then print tracebacks after the one-line error.
  shapes = {p: tuple(leaf.shape) for p, leaf in
            zip(paths.leaf_paths(params), jax.tree.leaves(params))}
  other = [p for p in sorted(current) if tuple(saved[p][0]) != shapes[p]]
  if other:
    what = few([f"{p} is {tuple(saved[p][0])} there, {shapes[p]} here"
                for p in other], 2)
    raise OtherModel(
        f"holds parameters of other shapes than this config's model ({what}):"
        " use the config it was trained with", diff=what)

