"""What the scripts in tools/ share: the command line's error convention.

A tools/ script ends with `toolkit.run(main)`: a bad flag, a missing or
malformed file (an `InputError`, or a file that cannot be opened) is one
line on stderr, `SCRIPT: error: ...`, and exit status 2, as for `metarec`
itself; `positive_int` and `positive_float` are argparse types that refuse
a zero or negative count before any work.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn

from metarec_jax.errors import InputError


def run(main: Callable[[], int | None]) -> NoReturn:
  """`sys.exit(main())`, with the error convention above."""
  name = os.path.basename(sys.argv[0])
  try:
    status = main()
  except InputError as e:
    _fail(name, str(e))
  except (FileNotFoundError, FileExistsError, NotADirectoryError,
          IsADirectoryError, PermissionError) as e:
    _fail(name, f"{e.filename}: {e.strerror}" if e.filename else str(e))
  sys.exit(status or 0)


def _fail(name: str, message: str) -> NoReturn:
  print(f"{name}: error: {message.splitlines()[0] if message else ''}",
        file=sys.stderr)
  sys.exit(2)


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"{value} is not >= 1")
  return value


def positive_float(text: str) -> float:
  """argparse type: a finite number > 0."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not 0 < value < float("inf"):
    raise argparse.ArgumentTypeError(f"{value:g} is not > 0")
  return value
