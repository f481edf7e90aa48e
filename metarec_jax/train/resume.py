"""What may change between a checkpoint and the run that resumes it.

A change that alters the shapes of the saved parameters (the model, the
data's feature vocabularies, what the inner loop learns) cannot resume: it
is refused with the keys and the parameters that differ. Anything else (more
steps, logging, checkpoint cadence, the learning rate) is accepted and each
changed key is logged, so a resumed run's log says how it differs.
"""

from __future__ import annotations

import logging
from typing import Any

from metarec_jax.errors import InputError

log = logging.getLogger("metarec")

# Keys that never affect the saved state's shapes or its meaning.
_HARMLESS = ("train.num_steps", "train.eval_every_steps", "train.max_nonfinite",
             "train.prefetch", "train.cpu_devices", "train.chunk_tasks",
             "train.preempt_exit_code",
             "log.", "checkpoint.", "eval.batch_tasks", "meta.remat",
             "meta.dual_form", "meta.unroll", "data.root", "data.store")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix[:-1]: d}
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}."))
  return out


def config_changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
  """`(key, saved value, current value)` for every key that differs."""
  a, b = _flat(saved), _flat(current)
  missing = object()
  return [(k, a.get(k, missing), b.get(k, missing))
          for k in sorted(set(a) | set(b))
          if _norm(a.get(k, missing)) != _norm(b.get(k, missing))]


def _norm(v):
  return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def _show(v) -> str:
  return "(absent)" if type(v).__name__ == "object" else repr(_norm(v))


def check_resume(saved_config: dict, current_config: dict,
                 saved_shapes: dict[str, tuple],
                 current_shapes: dict[str, tuple], *, step: int) -> None:
  """Refuses a shape-changing resume; logs the accepted changes.

  Raises:
    InputError: the parameters' shapes differ; the message lists the config
      keys that changed and the first parameters whose shapes differ.
  """
  changes = config_changes(saved_config, current_config)
  shape_diffs = []
  for path in sorted(set(saved_shapes) | set(current_shapes)):
    old, new = saved_shapes.get(path), current_shapes.get(path)
    if old != new:
      shape_diffs.append(
          f"{path}: {old[0] if old else 'absent'} -> "
          f"{new[0] if new else 'absent'}")
  if shape_diffs:
    keys = [k for k, _, _ in changes if not k.startswith(_HARMLESS)]
    what = ", ".join(f"{k}={_show(o)} -> {_show(n)}"
                     for k, o, n in changes if k in keys) or (
                         "no config key (the data's vocabularies changed)")
    raise InputError(
        f"cannot resume the checkpoint of step {step}: the change alters the"
        f" shapes of the saved state ({what}; {'; '.join(shape_diffs[:4])}"
        f"{' ...' if len(shape_diffs) > 4 else ''}). Use a new --workdir or"
        " undo the change.")
  for key, old, new in changes:
    log.info("resuming with a changed config: %s %s -> %s", key, _show(old),
             _show(new))
