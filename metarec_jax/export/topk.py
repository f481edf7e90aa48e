"""`topk.jsonl`: each exported user's top-K recommendations as JSON lines.

One line per user, in the order of `users.npy`:

    {"user": 42, "items": [2858, 1196], "scores": [4.713, 4.702]}

Items are external ids, best first; the user's rated items are excluded;
a user with fewer than K candidate items has fewer entries. Scores are the
model's predicted ratings (not clipped to the rating scale, so they rank
without ties at the scale's ends).
"""

from __future__ import annotations

import json

import numpy as np


def json_texts(values: np.ndarray) -> np.ndarray:
  """The JSON text of every id: integers as digits, strings quoted."""
  values = np.asarray(values)
  if values.dtype.kind in "iu":
    return values.astype(np.int64).astype(str)
  # numpy has no JSON string escaping; this runs once per id, not per line.
  return np.asarray([json.dumps(v, ensure_ascii=False)
                     for v in values.astype(str).tolist()], dtype=str)


def format_lines(user_text: np.ndarray, item_text: np.ndarray,
                 scores: np.ndarray, items: np.ndarray) -> str:
  """The JSON lines of `[N, K]` top-k arrays (item index -1 = none).

  Vectorised over users: one numpy string operation per rank. A score has
  9 significant digits, the most a float32 needs to read back as itself
  (with 7, served scores of preloaded rankings differed from the device's
  in their last digits).
  """
  n, k = items.shape
  if n == 0:
    return ""
  valid = items >= 0
  safe = np.where(valid, items, 0)
  ids = np.full(n, "", dtype=str)
  vals = np.full(n, "", dtype=str)
  for j in range(k):
    sep = "" if j == 0 else ", "
    ids = np.char.add(ids, np.where(
        valid[:, j], np.char.add(sep, item_text[safe[:, j]]), ""))
    vals = np.char.add(vals, np.where(
        valid[:, j], np.char.add(sep, np.char.mod("%.9g", scores[:, j])), ""))
  line = np.char.add(np.char.add('{"user": ', user_text), ', "items": [')
  line = np.char.add(np.char.add(line, ids), '], "scores": [')
  line = np.char.add(np.char.add(line, vals), "]}")
  return "\n".join(line.tolist()) + "\n"


def write_jsonl(path: str, user_ids: np.ndarray, item_ids: np.ndarray,
                scores: np.ndarray, items: np.ndarray, *,
                rows_per_write: int = 65536) -> None:
  """Writes `topk.jsonl` from `[U, K]` arrays, a slice of users at a time."""
  user_text = json_texts(user_ids)
  item_text = json_texts(item_ids)
  with open(path, "w", encoding="utf-8") as f:
    for lo in range(0, len(user_ids), rows_per_write):
      hi = lo + rows_per_write
      f.write(format_lines(user_text[lo:hi], item_text,
                           np.asarray(scores[lo:hi]),
                           np.asarray(items[lo:hi])))
