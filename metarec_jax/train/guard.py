"""Non-finite meta-steps: the warning, the stop at `train.max_nonfinite`,
and the error that ends a run which cannot go on."""

from __future__ import annotations

import contextlib
import logging

from metarec_jax import runtime
from metarec_jax.errors import Diverged, TrainingError
from metarec_jax.workdir import checkpoint as ckpt_lib

log = logging.getLogger("metarec")


class NonFiniteGuard:
  """Warns about skipped updates and ends the run at `train.max_nonfinite`
  of them in a row.

  The meta-step skips a non-finite update on the device and, once the
  limit is reached, every later one (`make_train_step`), so the counters
  need no reading on every step: `check` runs where the loop reads the
  device anyway (log steps, before a validation or a save, on a stop), and
  the step that reached the limit follows exactly from the streak.
  """

  def __init__(self, train_config, checkpointer: ckpt_lib.Checkpointer,
               step: int, state):
    """`train_config`: the `train` section (`max_nonfinite`, `lr`)."""
    self.limit = max(int(train_config.max_nonfinite), 1)
    self.checkpointer = checkpointer
    self.step = step  # the last step checked
    self.total = int(runtime.to_host(state.nonfinite_total))
    self.streak = int(runtime.to_host(state.nonfinite_streak))
    self.lr = float(train_config.lr)  # named where a validation diverges

  def check(self, step: int, streak, total) -> None:
    """`streak`, `total`: the counters after `step` (arrays or numbers).

    Raises:
      TrainingError: the limit was reached at or before `step`.
    """
    streak, total = int(runtime.to_host(streak)), int(runtime.to_host(total))
    over = max(streak - self.limit, 0)  # refused steps after the limit
    step, streak, total = step - over, streak - over, total - over
    if total > self.total:
      log.warning("steps %d-%d: non-finite loss, meta-gradient or update;"
                  " update skipped %d time(s) (%d in a row at step %d, %d in"
                  " total)", self.step + 1, step, total - self.total, streak,
                  step, total)
    self.step, self.total, self.streak = step, total, streak
    if streak >= self.limit:
      raise TrainingError(
          f"step {step}: {streak} consecutive steps with a non-finite loss,"
          f" meta-gradient or update (train.max_nonfinite={self.limit}); "
          + self._newest())

  def _newest(self) -> str:
    """Where to resume from: every saved state is finite
    (`Checkpointer.save` refuses others), and none is saved during a
    streak (`loop`: its state is the one the streak began from)."""
    self.checkpointer.wait()
    newest = self.checkpointer.latest_step()
    return ("no checkpoint was saved" if newest is None else
            f"the newest checkpoint, of step {newest}, holds a finite state"
            " to resume from with other settings (where it diverges again,"
            " start a new --workdir)")

  @contextlib.contextmanager
  def validating(self, step: int):
    """Around the validation of the state after `step`: adapted predictions
    that are not finite after step 0 are the trained meta-parameters'
    divergence (a finite but huge update of a large `train.lr` makes the
    inner loop overflow), a `TrainingError` naming the step, both rates
    and where to resume; at step 0 the settings' (`Diverged`, status 2)."""
    try:
      yield
    except Diverged as e:
      if step == 0:
        raise
      raise TrainingError(
          f"step {step}: validation: {e.what}: the inner loop diverges from"
          f" the meta-parameters trained so far (train.lr={self.lr:g},"
          f" {e.settings}): lower train.lr or meta.inner_lr;"
          f" {self._newest()}") from None

  def check_state(self, step: int, state) -> None:
    """`check` with the counters of `state` (the state after `step`)."""
    self.check(step, state.nonfinite_streak, state.nonfinite_total)
