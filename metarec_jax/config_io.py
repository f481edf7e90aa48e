"""Configs: load `configs/*.py`, complete them, apply `--config.KEY=VALUE`,
round-trip JSON.

A config file defines `get_config()` returning an `ml_collections`
ConfigDict (`--config=path.py:arg` passes `arg` to it). Every config that
enters (a file, a work directory's `config.json`, a library call) is
completed from `config_defaults` (`complete`), so code reads keys
directly and never restates a default. Overrides follow
ml_collections' syntax: the new value is parsed according to the type of the
value it replaces (tuples as Python literals, a bare word as a one-element
tuple), and an unknown key is an error that names the nearest known keys.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any, Iterable, Mapping

import ml_collections

from metarec_jax import atomic, config_defaults
from metarec_jax.errors import InputError

WORKDIR_CONFIG = "config.json"
CONFIG_FORMAT = 1

# Sections keyed by names of the user's data (a feature of their own files),
# so an override may add a key: its value's type.
OPEN_SECTIONS = {"data.list_pad": int}


def call_python_file(path: str, function: str, arg: str = "") -> Any:
  """Imports the Python file `path` and returns `function([arg])` of it.

  The parent of the file's folder is importable while it loads and while
  the function runs (lazily, too), so that a variant imports its base
  (`from configs import default`). Errors are `InputError`s naming the file.
  """
  module_name = "metarec_file_" + os.path.splitext(
      os.path.basename(path))[0].replace("-", "_")
  loader = importlib.util.spec_from_file_location(module_name, path)
  if loader is None:  # a name Python imports no module from (config.json)
    raise InputError("not a Python config file (a .py file defining"
                     f" {function}())", path=path)
  module = importlib.util.module_from_spec(loader)
  parent = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  sys.path.insert(0, parent)
  try:
    loader.loader.exec_module(module)
    if not hasattr(module, function):
      raise InputError(f"defines no {function}()", path=path)
    fn = getattr(module, function)
    return fn(arg) if arg else fn()
  except InputError:
    raise
  except SyntaxError as e:
    raise InputError(f"syntax error: {e.msg}", path=path, line=e.lineno) from e
  except (Exception, SystemExit) as e:  # pylint: disable=broad-except
    # (SystemExit: a file that calls sys.exit() ended the command silently
    # with its status)
    raise InputError(f"error while loading: {type(e).__name__}: {e}",
                     path=path) from e
  finally:
    sys.path.remove(parent)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Imports `path.py[:arg]` and returns its `get_config([arg])`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise InputError("no such config file", path=path)
  config = call_python_file(path, "get_config", arg)
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError("get_config() must return an ml_collections.ConfigDict",
                     path=path)
  _refuse_unknown_keys(config, path)
  return complete(config)


# Sections whose keys a dataclass checks where it is read (the synthetic
# generator takes more than the defaults name).
CHECKED_SECTIONS = ("data.synthetic",)


def _refuse_unknown_keys(config: ml_collections.ConfigDict, path: str) -> None:
  """Raises InputError naming a key of a config file that metarec has
  not (a typo such as `c.train.num_step = 3` trained with the old value,
  where the same typo as an override was refused)."""
  for key in unknown_keys(config):
    raise unknown_key(key, flat(to_dict(config_defaults.get_config())), path)


def unknown_keys(config: Mapping[str, Any]) -> list[str]:
  """The keys of `config` (nested) that metarec has not (a library
  caller's own, or a typo)."""
  known = set(flat(to_dict(config_defaults.get_config())))
  return [key for key in flat(to_dict(config))
          if key not in known and key.rpartition(".")[0] not in OPEN_SECTIONS
          and not any(key.startswith(s + ".") for s in CHECKED_SECTIONS)]


def unknown_key(key: str, known: Iterable[str], path: str) -> InputError:
  """The error of a config key metarec lacks, naming the nearest known
  keys (a config file's or an override's: `path` says which)."""
  near = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
  hint = f"; did you mean {' or '.join(near)}?" if near else ""
  return InputError(f"unknown config key {key!r}{hint}", path=path)


def complete(config: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A new config: `config` (a ConfigDict or its `to_dict`) with every key
  it lacks, so that code reads every key directly.

  A missing key runs as it did before the key existed: its value in
  `config_defaults.BEFORE_KEY`, else its default. Keys `config` has beyond
  the defaults (a variant's own) are kept. Every config read from a file
  (a config file, `config.json`, a checkpoint's or an export's record) and
  every config a library entry point takes passes through here.
  """
  def merge(defaults: dict, given: Mapping[str, Any], prefix: str) -> dict:
    out = {**defaults, **given}
    for key, default in defaults.items():
      if isinstance(default, dict) and key in given and not isinstance(
          given[key], Mapping):
        raise InputError(f"{prefix}{key} is {given[key]!r}, not a section"
                         " of keys")
      if isinstance(default, dict) and isinstance(out[key], Mapping):
        out[key] = merge(default, out[key] if key in given else {},
                         f"{prefix}{key}.")
      elif key not in given:
        out[key] = config_defaults.BEFORE_KEY.get(prefix + key, default)
    return out

  return from_dict(merge(to_dict(config_defaults.get_config()),
                         to_dict(config), ""))


def flat(config: Mapping[str, Any]) -> dict[str, Any]:
  """`{dotted key: value}` of every leaf of a nested config (a ConfigDict
  or the plain dict of `to_dict`), in key order."""
  out = {}
  for name, value in config.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update({f"{name}.{k}": v for k, v in flat(value).items()})
    else:
      out[name] = value
  return out


def dataclass_of(cls: type, section: Mapping[str, Any], name: str) -> Any:
  """`cls(**section)`, the dataclass of a config section named `name`.

  Raises:
    InputError: the section has keys `cls` lacks (a typo in a config
      file); the message names them and the known keys.
  """
  fields = sorted(f.name for f in dataclasses.fields(cls))
  unknown = sorted(set(section) - set(fields))
  if unknown:
    raise InputError(f"unknown key(s) {name}.{', '.join(unknown)}; known:"
                     f" {', '.join(fields)}")
  return cls(**section)


def _number(text: str) -> int | float | None:
  """`text` as an int or a float (`nan` and `inf` too), else None."""
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return None


def _unquoted(text: str, current: tuple | list) -> tuple:
  """A tuple given without quotes (`a,b`): text, as it always was, except
  for a tuple of numbers (the key's current elements are numbers; an
  empty one: every element reads as a number), whose elements that read as
  numbers become them, so that a rule names the bad element (`1,nan` and
  `16,x` blamed the valid '1' and '16'). Brackets around it (`(16,x)`,
  `[a,b]`) enclose the tuple: they are no part of its first and last
  elements."""
  text = text.strip()
  if text[:1] + text[-1:] in ("()", "[]"):
    text = text[1:-1]
  parts = [v.strip() for v in text.split(",")]
  numbers = [_number(v) for v in parts]
  if current:
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                  for v in current)
  else:
    numeric = all(n is not None for n in numbers)
  if not numeric:
    return tuple(parts)
  return tuple(v if n is None else n for v, n in zip(parts, numbers))


def _parse(key: str, text: str, current: Any) -> Any:
  flag = f"--config.{key}"
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise InputError(f"expected true or false, got {text!r}", path=flag)
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise InputError(f"expected an integer, got {text!r}", path=flag) from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise InputError(f"expected a number, got {text!r}", path=flag) from None
  if isinstance(current, (tuple, list)):
    if not text.strip():
      return ()
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):  # `a,b` without quotes
      return _unquoted(text, current)
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Iterable[tuple[str, str]]
                    ) -> ml_collections.ConfigDict:
  """Applies `(dotted key, text)` overrides in order; returns `config`."""
  known = list(flat(config))
  for key, text in overrides:
    node = config
    *path, last = key.split(".")
    try:
      for name in path:
        node = node[name]
        if not isinstance(node, ml_collections.ConfigDict):
          raise KeyError(name)
      open_type = OPEN_SECTIONS.get(".".join(path))
      if open_type and not last:  # `data.list_pad.=3`: a column of no name
        raise KeyError(last)
      current = open_type() if open_type and last not in node else node[last]
    except (KeyError, AttributeError):
      raise unknown_key(key, known, f"--config.{key}") from None
    if isinstance(current, ml_collections.ConfigDict):
      raise InputError(f"{key!r} is a section; set one of its keys",
                       path=f"--config.{key}")
    value = _parse(key, text, current)
    with node.ignore_type():
      node[last] = value
  return config


def _nested(value: Any, sequence: type) -> Any:
  """`value` as plain dicts, its tuples and lists as `sequence`s."""
  if isinstance(value, (dict, ml_collections.ConfigDict)):
    return {k: _nested(v, sequence) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return sequence(_nested(v, sequence) for v in value)
  return value


def to_dict(config: Mapping[str, Any]) -> dict:
  """JSON-ready dict (tuples become lists)."""
  return _nested(config, list)


def from_dict(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Inverse of `to_dict` (lists become tuples again)."""
  return ml_collections.ConfigDict(_nested(d, tuple))


def _versions() -> dict[str, str]:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  out = {"python": sys.version.split()[0]}
  for pkg in ("metarec-jax", "jax", "jaxlib", "flax", "optax", "numpy",
              "orbax-checkpoint", "tensorboard", "ml_collections"):
    try:
      out[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      out[pkg] = None
  return out


def _git_revision() -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"],
                         capture_output=True, text=True, timeout=5,
                         check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  if out.returncode != 0:
    return None
  dirty = subprocess.run(["git", "-C", here, "status", "--porcelain",
                          "--untracked-files=no"], capture_output=True,
                         text=True, timeout=5, check=False).stdout.strip()
  return out.stdout.strip() + ("-dirty" if dirty else "")


def write_workdir_config(workdir: str, config: ml_collections.ConfigDict, *,
                         data_files: dict | None = None) -> str:
  """Writes `WORKDIR/config.json`: the resolved config and where it ran;
  `data_files`: the input files of the store it trained on (its
  manifest's `source.files`), where that records them."""
  path = os.path.join(workdir, WORKDIR_CONFIG)
  record = {"format": CONFIG_FORMAT, "config": to_dict(config),
            "versions": _versions(), "git_revision": _git_revision(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
  if data_files:
    record["data_files"] = data_files
  atomic.write_text(path, json.dumps(record, indent=1) + "\n")
  return path


def workdir_config_file(workdir: str) -> str | None:
  """`WORKDIR/config.json`, None where there is none; `InputError` where
  something else stands there (a folder: "Is a directory", exit 1, from
  reading or, after the work of a fresh run, writing it)."""
  path = os.path.join(workdir, WORKDIR_CONFIG)
  if not atomic.refuse_non_file(path, "a work directory's config.json is"
                                " the JSON file `metarec train` writes"):
    return None
  return path


def read_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of a workdir written by `metarec train` (`complete`)."""
  path = workdir_config_file(workdir)
  if path is None:
    raise InputError("no config.json: not a metarec work directory (run"
                     " `metarec train` there first)", path=workdir)
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
  except json.JSONDecodeError as e:
    raise InputError(f"invalid JSON: {e.msg}", path=path, line=e.lineno) from e
  except UnicodeDecodeError as e:
    raise InputError(f"not UTF-8 text (at byte offset {e.start})",
                     path=path) from e
  if not isinstance(record, dict) or not isinstance(record.get("config"),
                                                    dict):
    raise InputError("not a metarec config.json", path=path)
  try:
    config = complete(record["config"])
  except InputError as e:
    raise InputError(e.problem, path=path) from e
  given = flat(record["config"])
  for section, names in config_defaults.FIRST_KEYS.items():
    for key in (f"{section}.{name}" for name in names.split()):
      if key not in given:
        raise InputError(f"config key {key} is missing (every config.json"
                         " metarec writes has it): the file is damaged or"
                         " was edited; put the key back, or train again in"
                         " a new --workdir", path=path)
  return config
