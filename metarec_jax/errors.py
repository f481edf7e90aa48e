"""Errors in user input (flags, configs, data files).

The command line turns an `InputError` into one line on stderr and exit
status 2, never a traceback, so every message names where the problem is:
`FILE:LINE: problem`, `FILE: problem` or `--flag: problem`.
"""

from __future__ import annotations

import os


class InputError(Exception):
  """A problem in something the user gave us, located as precisely as known."""

  def __init__(self, problem: str, *, path: str | os.PathLike | None = None,
               line: int | None = None):
    self.problem = problem
    self.path = None if path is None else os.fspath(path)
    self.line = line
    super().__init__(self.message)

  @property
  def message(self) -> str:
    if self.path is None:
      return self.problem
    if self.line is None:
      return f"{self.path}: {self.problem}"
    return f"{self.path}:{self.line}: {self.problem}"
