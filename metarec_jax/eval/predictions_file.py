"""The query predictions `metarec eval --write_tasks=DIR` writes beside the
tasks: `DIR/<scenario>/predictions.tsv`, one row per query rating.

Columns (tab-separated, one header line): `user`, `item` (external ids),
`rating` (the true rating), `prediction` (after adaptation), `unadapted`
(the meta-parameters' own prediction) and one column per model-free
baseline (`global_mean`, `item_mean_user_bias`), all clipped to the rating
scale as `metarec eval` scores them. Rows of a task are consecutive, in
the order of the scenario's `query` file, so any metric of the report can
be recomputed, or a new one computed, from this file alone.
"""

from __future__ import annotations

import os

import numpy as np

from metarec_jax.errors import InputError

FILE_NAME = "predictions.tsv"
ID_COLUMNS = ("user", "item")


def format_predictions(user_ids: np.ndarray, item_ids: np.ndarray,
                       mask: np.ndarray, columns: dict[str, np.ndarray]
                       ) -> str:
  """The file's text.

  Args:
    user_ids: `[N]` external id of each task's user.
    item_ids: `[N, Q]` external ids of the query items.
    mask: `[N, Q]` the real query ratings (padding is left out).
    columns: name -> `[N, Q]` values, in column order (`rating` first).
  """
  mask = np.asarray(mask, bool)
  users = np.broadcast_to(np.asarray(user_ids)[:, None], mask.shape)[mask]
  fields = [np.asarray(users).astype(str),
            np.asarray(item_ids)[mask].astype(str)]
  fields += [np.char.mod("%.6g", np.asarray(v, np.float64)[mask])
             for v in columns.values()]
  line = fields[0]
  for f in fields[1:]:
    line = np.char.add(np.char.add(line, "\t"), f)
  head = "\t".join(ID_COLUMNS + tuple(columns)) + "\n"
  return head + "".join(f"{row}\n" for row in line.tolist())


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Column name -> values of a predictions file (ids as strings).

  Raises:
    InputError: a missing file, a bad header or a malformed line.
  """
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      head = f.readline().rstrip("\n").split("\t")
      rows = [line.rstrip("\n").split("\t") for line in f]
  except OSError as e:
    raise InputError(f"cannot read: {e.strerror}", path=path) from None
  if tuple(head[:2]) != ID_COLUMNS or "rating" not in head:
    raise InputError("not a predictions file: the header must start with "
                     "user, item and name a rating column", path=path,
                     line=1)
  out = {name: [] for name in head}
  for number, row in enumerate(rows, start=2):
    if len(row) != len(head):
      raise InputError(f"expected {len(head)} tab-separated fields, found "
                       f"{len(row)}", path=path, line=number)
    for name, value in zip(head, row):
      out[name].append(value)
  result = {}
  for name, values in out.items():
    if name in ID_COLUMNS:
      result[name] = np.asarray(values, dtype=str)
      continue
    try:
      result[name] = np.asarray(values, np.float64)
    except ValueError:
      bad = next(i for i, v in enumerate(values) if not _is_number(v))
      raise InputError(f"{name} {values[bad]!r} is not a number", path=path,
                       line=bad + 2) from None
  return result


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True
