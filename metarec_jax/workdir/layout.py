"""What stands where in a work directory, checked before `train` works.

A file where `train` makes a folder (`tensorboard/`, `eval/`), or a folder
where it writes a file (`metrics.jsonl`), ended the run in "File exists"
or "Is a directory", exit 1: at its start or, for `eval/`, after the
training, at the final evaluation.
"""

from __future__ import annotations

import os

from metarec_jax import atomic, config_io

FOLDERS = ("tensorboard", "eval")  # checkpoints: `checkpoint`
FILES = ("metrics.jsonl",)  # and config.json (`config_io`)


def check(workdir: str) -> str | None:
  """Raises `InputError` naming the first entry of `workdir` of the wrong
  kind; returns `config_io.workdir_config_file(workdir)`."""
  config = config_io.workdir_config_file(workdir)
  for name in FOLDERS:
    atomic.refuse_file_in_the_way(os.path.join(workdir, name),
                                  named="--workdir")
  for name in FILES:
    atomic.refuse_non_file(os.path.join(workdir, name), "a work directory's"
                           " metrics are a file of JSON lines")
  return config
