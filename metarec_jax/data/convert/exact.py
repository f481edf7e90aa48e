"""Numbers written as text that reads back as the same value.

Files the engine writes for people and for itself (the server's
interaction log, `eval.predictions_file`) hold float values that must read
back exactly as the values learned or scored: `exact_text`.
"""

from __future__ import annotations

import numpy as np

# Significant digits (short, always exact) of a value of each float type.
_DIGITS = {np.dtype(np.float16): (4, 5), np.dtype(np.float32): (7, 9),
           np.dtype(np.float64): (15, 17)}


def exact_text(values: np.ndarray) -> np.ndarray:
  """Each value as the text that reads back as the same value of its own
  float type: the short form (`%.7g` for float32) where it does, else the
  long one (`%.9g`). Rounding to fewer digits made ties that the scored
  values did not have: the served predictions sit within 1e-3 of whole
  stars (the median map), and nDCG recomputed from six digits differed
  from the report's by up to 2e-3 (`eval.predictions_file`); a rating
  logged by the server as 3 where it had learned 2.9999998 read back as
  another label of an implicit threshold of 3 after a restart."""
  values = np.asarray(values)
  if not np.issubdtype(values.dtype, np.floating):
    values = values.astype(np.float64)
  short, full = _DIGITS.get(values.dtype, (15, 17))
  # Room for the long form (a fixed-width array would cut it).
  text = np.char.mod(f"%.{short}g", values.astype(np.float64)).astype("U32")
  inexact = text.astype(np.float64).astype(values.dtype) != values
  inexact &= ~np.isnan(values)
  if inexact.any():
    text[inexact] = np.char.mod(f"%.{full}g",
                                values[inexact].astype(np.float64))
  return text
