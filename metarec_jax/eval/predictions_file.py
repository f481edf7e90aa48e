"""The query predictions `metarec eval --write_tasks=DIR` writes beside the
tasks: `DIR/<scenario>/predictions.tsv`, one row per query rating.

Columns (tab-separated, one header line): `user`, `item` (external ids,
CSV-quoted where one holds a tab or a quote),
`rating` (the true rating), `prediction` (after adaptation), `unadapted`
(the meta-parameters' own prediction) and one column per model-free
baseline (`global_mean`, `item_mean_user_bias`), all clipped to the rating
scale as `metarec eval` scores them; then `prediction_unclipped` and
`item_mean_user_bias_unclipped`, the same before the clip, and
`prediction_ranked`, the model's scores before the median map: nDCG ranks
the baseline's unclipped values and the model's ranked ones, as the
served top-k does (the map can differ per kind of item,
`Recommender.predict_ranked`; `ranked`: files from before a column rank
the next one: unclipped, then clipped values). Each value is written with
the digits that read back as the value scored (`exact_text`): the model's
columns (`FLOAT32_COLUMNS`) as float32, as `read_predictions` reads them,
the baselines' as float64. Rows of a task are consecutive, in the order of
the scenario's `query` file, so any metric of the report can be recomputed
exactly, or a new one computed, from this file alone.
"""

from __future__ import annotations

import os

import numpy as np

from metarec_jax.data.convert import delimited, parsing, ratings_io, writing
from metarec_jax.data.convert.exact import exact_text
from metarec_jax.errors import InputError

FILE_NAME = "predictions.tsv"
ID_COLUMNS = ("user", "item")
UNCLIPPED = "_unclipped"
# The columns the engine scores in float32 (the model's and the ratings);
# their text is the shortest that reads back as the same float32, which
# read as float64 is another value (in the 8th digit).
FLOAT32_COLUMNS = ("rating", "prediction", "unadapted",
                   "prediction_unclipped", "prediction_ranked")


def unclipped_column(name: str) -> str:
  """The column of `name`'s values before the clip to the rating scale."""
  return name + UNCLIPPED


def ranked_column(name: str) -> str:
  """The column of the scores that rank `name`'s items, where they are not
  its values (the model's, before the median map)."""
  return name + "_ranked"


def ranked(columns: dict[str, np.ndarray], name: str) -> np.ndarray:
  """The values nDCG ranks column `name` by: its ranked column where the
  file has one, else its unclipped one, else its own."""
  return columns.get(ranked_column(name),
                     columns.get(unclipped_column(name), columns[name]))


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
  # CSV-quoted where an id holds a tab or a quote (a generic file's quoted
  # field may): `read_predictions` reads them back as they were.
  fields = [writing.quote_fields(users, "\t"),
            writing.quote_fields(np.asarray(item_ids)[mask], "\t")]
  fields += [exact_text(np.asarray(v)[mask]) for v in columns.values()]
  head = "\t".join(ID_COLUMNS + tuple(columns)) + "\n"
  return head + writing.join_lines(fields, "\t")


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Column name -> values of a predictions file (ids as strings,
  `FLOAT32_COLUMNS` as float32, the others float64: each as scored).

  Raises:
    InputError: a missing file, a bad header, a line with another number
      of fields or a value that is not a number (as `data.convert.delimited`).
  """
  table = delimited.read_table(path, delimiter="\t", encoding="utf-8",
                               header=True, allow_no_rows=True,
                               quoting="auto")
  if tuple(table.header[:2]) != ID_COLUMNS or "rating" not in table.header:
    raise InputError("not a predictions file: the header must start with "
                     "user, item and name a rating column", path=table.path,
                     line=table.header_line)
  def values(i, name):
    if name in ID_COLUMNS:
      return np.asarray(table.column(i), dtype=str)
    floats = parsing.floats(table, table.column(i), name)
    return floats.astype(np.float32) if name in FLOAT32_COLUMNS else floats

  return {name: values(i, name) for i, name in enumerate(table.header)}


def task_arrays(path: str | os.PathLike, store, width: int
                ) -> dict[str, np.ndarray]:
  """A predictions file of a store's tasks as arrays, one row per task.

  Every task of the protocol has `width` (`data.query_size`) query
  ratings, on consecutive rows: each value column becomes `[N, width]`;
  `items` holds the query items' store indices (-1 for an item the
  store lacks) and `users` `[N]`
  the tasks' users' (-1 likewise).

  Raises:
    InputError: what `read_predictions` refuses, or rows that are not
      whole tasks of `width` query ratings.
  """
  p = read_predictions(path)
  n = len(p["rating"]) // width
  if n * width != len(p["rating"]):
    raise InputError(f"{len(p['rating'])} rows are not tasks of {width}"
                     " query ratings each", path=path)

  def indices(known, ids):
    known = np.asarray(known)
    if known.dtype.kind not in "iu":
      return ratings_io.lookup(known, ids)
    # A store of integer ids knows no id that is not one as it writes
    # them (another dataset's "i1373" was a ValueError from deep in the
    # tool; "007" is not item 7).
    numbers, ok = parsing.parse_int_ids(ids)
    out = np.full(len(ids), -1, np.int64)
    out[ok] = ratings_io.lookup(known, numbers[ok])
    return out

  out = {name: values.reshape(n, width) for name, values in p.items()
         if name not in ID_COLUMNS}
  out["items"] = indices(store.item_ids, p["item"]).reshape(n, width)
  out["users"] = indices(store.user_ids, p["user"]).reshape(n, width)[:, 0]
  return out
