"""Errors in user input (flags, configs, data files).

The command line turns an `InputError` into one line on stderr and exit
status 2, never a traceback, so every message names where the problem is:
`FILE:LINE: problem`, `FILE: problem` or `--flag: problem`.
"""

from __future__ import annotations

import contextlib
import os


MAX_PROBLEM = 1000  # characters of a problem's text kept in a message


class InputError(Exception):
  """A problem in something the user gave us, located as precisely as known."""

  def __init__(self, problem: str, *, path: str | os.PathLike | None = None,
               line: int | None = None):
    if len(problem) > MAX_PROBLEM:  # a message echoing a huge value
      problem = f"{problem[:MAX_PROBLEM]}... ({len(problem):,} characters)"
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


class Diverged(InputError):
  """Adapted predictions that are not finite from finite meta-parameters:
  the inner loop diverges at these settings (`eval`, `export`; in `train`,
  a validation after step 0 is a `TrainingError`, `train.guard`). `what`:
  the predictions that are not finite; `settings`: the inner loop's."""

  def __init__(self, what: str, settings: str):
    super().__init__(f"{what}: {divergence(settings)}")
    self.what, self.settings = what, settings


def inner_settings(meta_config) -> str:
  """The inner loop's settings as an error names them. `meta_config`: a
  `meta.MetaConfig` or the config's `meta` section."""
  return (f"meta.inner_lr={meta_config.inner_lr},"
          f" meta.inner_steps={meta_config.inner_steps}")


def diverges(meta_config) -> str:
  """What an error says where adapted predictions are not finite while the
  meta-parameters are (`eval`, `export`, serving): the inner loop diverges
  at the settings of `meta_config` (as `inner_settings`)."""
  return divergence(inner_settings(meta_config))


def divergence(settings: str) -> str:
  """What an error says where adapted predictions are not finite while the
  meta-parameters are; `settings`: the inner loop's (`inner_settings`)."""
  return (f"the inner loop diverges at these settings ({settings}); lower"
          " meta.inner_lr")


class OutputError(Exception):
  """Something could not be written (a full disk, a file-size limit, no
  permission): names the path and the cause. The command line prints it
  as one line and exits with status 1."""

  def __init__(self, path: str | os.PathLike, cause: str):
    self.path = os.fspath(path)
    self.cause = cause
    super().__init__(f"cannot write {self.path}: {cause}")


class TrainingError(Exception):
  """The run cannot go on (persistent non-finite meta-gradients, no
  readable checkpoint). The command line prints it as one line and exits
  with status 1."""


def error_line(e: Exception, command: str | None = None
               ) -> tuple[str, int] | None:
  """The line (after `PROG: error: `) and exit status of an error the
  command line reports in one line: 2 for input, 1 for output (a full
  disk, no permission, an OS error the code did not name), training
  failures and memory that ran out (`out_of_memory`, with what to lower
  in `command`, the `metarec` command that failed); None for any other
  (a bug: its traceback is the report)."""
  if isinstance(e, InputError):
    return e.message, 2
  if isinstance(e, (OutputError, TrainingError)):
    return str(e), 1
  if isinstance(e, OSError):
    return (f"{e.filename}: " if e.filename else "") + cause_of(e), 1
  if out_of_memory(e):
    # (Python's own MemoryError has no message.)
    said = excerpt((str(e).strip().splitlines() or [type(e).__name__])[0],
                   200, quote=False)
    return (f"out of memory ({said}):"
            f" {MEMORY_HINTS.get(command, MEMORY_HINT)}", 1)
  return None


# What to lower when a step, an evaluation or the input pipeline does not
# fit (`config_meanings` says what each key bounds).
MEMORY_HINT = ("lower train.chunk_tasks or train.tasks_per_step (train,"
               " bench), eval.batch_tasks (eval) or --chunk_users (export),"
               " or the model's sizes")
_STEP_HINT = ("lower train.chunk_tasks or train.tasks_per_step, or the"
              " model's sizes")
# Each command's own (`data synth --num_items=100000000000` was told to
# lower train and eval keys it has none of).
MEMORY_HINTS = {
    "train": _STEP_HINT, "bench": _STEP_HINT,
    "eval": "lower eval.batch_tasks (or eval.catalog_block on implicit"
            " feedback), or the model's sizes",
    "export": "lower --chunk_users",
    "serve": "lower --max_batch, --max_items or --max_ratings",
    "data": "lower --num_users or --num_items (data synth), or build the"
            " store on a machine with more memory",
}


def out_of_memory(e: BaseException) -> bool:
  """Whether `e` is a failed allocation: numpy's `MemoryError`, or a JAX
  runtime error that XLA raised for device or host memory (on an
  accelerator `RESOURCE_EXHAUSTED: Out of memory while trying to
  allocate ...`, on a CPU `...: Out of memory allocating ...`). Matched
  by name and text, so this module needs no JAX import."""
  if isinstance(e, MemoryError):
    return True
  if type(e).__name__ not in ("JaxRuntimeError", "XlaRuntimeError"):
    return False
  text = str(e)
  return text.startswith("RESOURCE_EXHAUSTED") or "Out of memory" in text


def require_flag(fv, name: str):
  """The value of the absl flag `--name` in `fv`; `InputError` if unset."""
  value = fv[name].value
  if not value:
    raise InputError(f"--{name} is required")
  return value


def cause_of(error: OSError) -> str:
  """The operating system's words for `error` ("No space left on device")."""
  if error.strerror:
    return error.strerror
  if error.errno:
    return os.strerror(error.errno)
  return str(error) or type(error).__name__


@contextlib.contextmanager
def writing(path: str | os.PathLike):
  """Turns an `OSError` raised inside the block into an `OutputError`
  naming the file it names, else `path`."""
  try:
    yield
  except OSError as e:
    raise OutputError(e.filename or path, cause_of(e)) from e


def more_lines(lines, of: str = "") -> str:
  """What follows an error at the first of `lines` (the line numbers of
  every row with the problem, in file order) where it is not the only one:
  ` (and 3 more such lines: 9, 12, 40)`, or with `of` ` (and 3 more lines
  OF: ...)`, so that a file with many bad lines is not fixed one run at a
  time."""
  rest = lines[1:]  # a sequence: not every line of a bad file to ints
  if not len(rest):
    return ""
  noun = "lines" if len(rest) > 1 else "line"
  what = f"{noun} {of}" if of else f"such {noun}"
  shown = ", ".join(str(int(line)) for line in rest[:5])
  return (f" (and {len(rest):,} more {what}: {shown}"
          f"{', ...' if len(rest) > 5 else ''})")


def excerpt(value, limit: int = 60, *, quote: bool = True) -> str:
  """`value` as text for an error message, cut to about `limit` characters:
  a long value (a 50 MB field of a broken file) keeps its head and states
  its length. Strings are quoted (`repr`) unless `quote=False`."""
  if isinstance(value, list):
    value = tuple(value)
  is_text = isinstance(value, str)
  text = repr(str(value)) if quote and is_text else str(value)
  if len(text) <= limit:
    return text
  size = len(value) if is_text else len(text)
  return f"{text[:limit]}... ({size:,} characters)"
