"""What the scripts in tools/ share: the command line's error convention.

A tools/ script ends with `toolkit.run(main)`: a bad flag, a missing or
malformed file (an `InputError`, or a file that cannot be opened) is one
line on stderr, `SCRIPT: error: ...`, and exit status 2, as for `metarec`
itself (a write that fails, a full disk, is one line and status 1);
`positive_int` and `positive_float` are argparse types that refuse
a zero or negative count before any work; `write_folder` writes a
generated dataset folder all or nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, Sequence

from metarec_jax import atomic
from metarec_jax.errors import InputError, OutputError


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
  except OutputError as e:  # a full disk: status 1, as for `metarec`
    _fail(name, str(e), status=1)
  sys.exit(status or 0)


def help_asked(argv: Sequence[str], doc: str, fv=None) -> bool:
  """Prints `doc` (the tool's docstring) and the flags `fv` defines where
  `argv` asks for help (`-h`, `--help`), and says whether it did: a tool's
  absl flags or hand-parsed arguments refused `--help` as unknown."""
  if not any(a in ("-h", "--help", "--helpfull") for a in argv):
    return False
  print(doc.strip())
  if fv is not None:
    print("\nflags:")
    for module, defined in fv.flags_by_module_dict().items():
      if not module.startswith("absl"):
        for flag in defined:
          print(f"  --{flag.name}: {flag.help}")
  return True


def _fail(name: str, message: str, status: int = 2) -> NoReturn:
  print(f"{name}: error: {message.splitlines()[0] if message else ''}",
        file=sys.stderr)
  sys.exit(status)


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


def write_folder(out: str, files: dict[str, bytes], marker: str) -> str:
  """Writes `files` ({name: bytes}) as the folder `out`, all or nothing
  (`atomic.Folder`: built beside it, then renamed), and returns `out`.

  A folder this tool wrote before (one holding the file `marker`) is
  replaced whole, so a failure or a kill half-way leaves it as it was;
  any other non-empty `out` (a user's data given by mistake) is refused
  with an `InputError`.
  """
  atomic.refuse_other(
      out, lambda path: os.path.exists(os.path.join(path, marker)),
      f"a folder this tool did not write (no {marker}); choose another"
      " --out")
  with atomic.Folder(out) as folder:
    for name, data in files.items():
      folder.write_file(name, data)
    folder.swap()
  return out
