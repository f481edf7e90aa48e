"""`metarec eval --write_tasks=DIR`: the tasks an evaluation used, written
back as ratings files in the dataset's own input format
(`ratings_io.format_ratings`), so that they can be read, rerun with
`eval --ratings` and scored by other tools (`tools/average_predictions.py`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from metarec_jax import atomic
from metarec_jax.data.convert.ratings_io import format_ratings, store_format
from metarec_jax.data.splits import TaskSet
from metarec_jax.data.store import TaskStore


TASKS_MANIFEST = "tasks.json"


def write_tasks(out: str | os.PathLike, tasksets: dict[str, TaskSet],
                store: TaskStore, extra: dict[str, Any] | None = None,
                files: dict[str, str] | None = None) -> None:
  """Writes the support and query ratings of every scenario's tasks.

  `OUT/<scenario>/support.<ext>` and `query.<ext>` hold the ratings in the
  store's input format (support rows of a task, then the next task's; an
  implicit store's positives at the top of the scale), and
  `OUT/tasks.json` the counts. `files` maps further relative paths to the
  text to write with them (the evaluation's predictions). The folder is built beside `out` and renamed
  into place; an existing `out` is replaced only if it holds an earlier
  `tasks.json`.

  Raises:
    InputError: `out` exists and is not an earlier task folder.
  """
  out = os.path.abspath(os.fspath(out))
  atomic.refuse_other(
      out, lambda p: os.path.exists(os.path.join(p, TASKS_MANIFEST)),
      "exists and is not a task folder written by --write_tasks; choose"
      " another folder")
  fmt = store_format(store)
  # The files hold no times (`format_ratings` is given none): their format
  # says so, and a header file's columns are those written.
  written = dataclasses.replace(fmt, timestamp=None, columns=tuple(
      c for c in fmt.columns if c != fmt.timestamp))
  summary = {"format": written.to_json(), "scenarios": {}, **(extra or {})}
  with atomic.Folder(out) as folder:
    for scenario, tasks in tasksets.items():
      task_of_row = np.repeat(np.arange(len(tasks)), np.diff(tasks.offsets))
      users = np.asarray(store.user_ids)[tasks.users[task_of_row]]
      items = np.asarray(store.item_ids)[tasks.items]
      ratings = np.asarray(tasks.ratings)
      if store.manifest.get("implicit"):
        # An implicit store's positives (1.0) on the input's scale: its top,
        # at or above any threshold, so `eval --ratings` and `export` read
        # them back as positives (as the server logs an interaction).
        ratings = np.full(len(ratings), fmt.rating_max, np.float64)
      for part, rows in (("support", ~tasks.is_query),
                         ("query", tasks.is_query)):
        text = format_ratings(users[rows], items[rows], ratings[rows], fmt)
        with open(folder.path(f"{scenario}/{part}.{fmt.extension}"),
                  "wb") as f:
          f.write(text.encode(fmt.encoding))
      summary["scenarios"][scenario] = {
          "tasks": len(tasks), "support": int((~tasks.is_query).sum()),
          "query": int(tasks.is_query.sum())}
    for name, text in (files or {}).items():
      with open(folder.path(name), "w", encoding="utf-8") as f:
        f.write(text)
    folder.finish(TASKS_MANIFEST, summary)
