"""Checkpoint selection and early stopping from validation losses.

The validation loss is `workdir.criterion.criterion`: the MAE on ratings,
1 - the full-catalog nDCG@10 on implicit feedback.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class Selection:
  """What the validations so far say: which state to keep, when to stop.

  Attributes:
    patience: `train.early_stop_patience` (0: never stop early).
    best: the lowest validation MAE, the start's included: the checkpoint
      that `eval` and `export` use. A trained step that ties it becomes
      the best (`Checkpointer.best` takes the latest of equal MAEs too):
      where the served model is the baseline for existing items (share 0),
      every validation ties exactly, and the later one carries shares
      fitted on more training (a new items' share above 0).
    trained: the lowest validation MAE of a trained step. Early stopping
      counts the validations since it last improved, so the start is a
      candidate to keep, not a bar that training must clear within the
      patience (a model often validates worse than its start at first).
    stale: validations since `trained` last improved.
    best_report: `{"step", "val"}` of the `best` step (its validation
      report, what `train`'s closing verdict speaks of; None: not given,
      or restored from a checkpoint written before it was recorded).
  """

  patience: int = 0
  best: float = math.inf
  trained: float = math.inf
  stale: int = 0
  best_report: dict | None = None

  @classmethod
  def resumed(cls, patience: int, validated: dict[int, float],
              saved: dict | None = None) -> "Selection":
    """The selection of a run whose kept checkpoints were validated as
    `validated` (step -> MAE; the start is step 0): the best of them is
    the one to beat. `saved`: the restored checkpoint's `record()`, which
    says where the patience stood (the kept checkpoints alone cannot: the
    validations that did not improve were not all saved); without it (a
    checkpoint written before it was recorded) the patience counts from
    the best kept trained step."""
    trained = [m for step, m in validated.items() if step > 0]
    out = cls(patience=patience, best=min(validated.values(),
                                          default=math.inf),
              trained=min(trained, default=math.inf))
    if saved:
      out.trained = (math.inf if saved.get("trained") is None
                     else float(saved["trained"]))
      out.stale = int(saved.get("stale", 0))
      out.best_report = saved.get("best_report")
    return out

  def record(self) -> dict:
    """What a checkpoint records for `resumed` (JSON: no infinity)."""
    return {"trained": None if math.isinf(self.trained) else self.trained,
            "stale": self.stale, "best_report": self.best_report}

  def start(self, mae: float, report: dict | None = None) -> bool:
    """Records the validation of the start (`report`: its
    `best_report`); whether it is the best."""
    if mae < self.best:
      self.best, self.best_report = mae, report
      return True
    return False

  def update(self, mae: float, report: dict | None = None) -> bool:
    """Records the validation of a trained step (`report`: its
    `best_report`); whether it is the best so far (to be saved as such)."""
    self.stale = 0 if mae < self.trained else self.stale + 1
    self.trained = min(self.trained, mae)
    if mae <= self.best:
      self.best, self.best_report = mae, report
      return True
    return False

  @property
  def should_stop(self) -> bool:
    return bool(self.patience) and self.stale >= self.patience
