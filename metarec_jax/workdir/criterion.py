"""The validation loss that selects checkpoints (lower is better).

The MAE on ratings and, on implicit feedback, 1 - the full-catalog
nDCG@10 of the validation users' held-out positives: the quality of the
top-k list a server hands out, which the training losses (BCE, BPR, a
sampled softmax against a few negatives) only approximate. Checkpoints
keep it under their `val_mae` metric (`checkpoint.VAL_MAE`, the name it
had when only ratings were validated).
"""

from __future__ import annotations

RANKING_CRITERION = "ndcg@10"
SELECT_ON = ("served", "model")  # `train.select_on`


def criterion(val: dict, fitted: dict | None = None) -> float | None:
  """The validation loss of a validation's metrics (`val`): its MAE, or
  with a ranking (implicit feedback) 1 - its full-catalog nDCG@10; None
  where it has none (no validation task).

  With `fitted` (what the validation fitted, `validation.validate`'s
  scalars; `train.select_on=served`), the MAE of what is served: the
  median map's cross-fitted MAE where validation serves the map."""
  if "ranking" in val:
    value = (val["ranking"].get("full") or {}).get(RANKING_CRITERION)
    return None if value is None else 1.0 - float(value)
  if (fitted or {}).get("val/median_map") == 1.0:
    return float(fitted["val/median_map_mae"])
  return val.get("mae")


def criterion_name(implicit: bool) -> str:
  """How the log names the validation loss."""
  return f"1 - {RANKING_CRITERION}" if implicit else "MAE"
