"""`data` config -> task store: build it once, open it afterwards."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

import numpy as np

from metarec_jax import atomic
from metarec_jax.data import store as store_lib
from metarec_jax.data import implicit
from metarec_jax.data.convert import (delimited, describe, fingerprint, generic,
                                      movielens, movielens100k, store_checks,
                                      synthetic)
from metarec_jax.data.convert.store_checks import store_path
from metarec_jax.errors import InputError, OutputError

DATASETS = ("synthetic", "movielens-1m", "movielens-100k", "generic")
# The `data.generic` keys that name input files in data.root.
_GENERIC_FILES = ("ratings", "item_features", "user_features")


def prepare(data_config, out: str | os.PathLike,
            log: Callable[[str], None] | None = None) -> None:
  """Builds the task store of `data_config` (a `data` section) at `out`.

  With `data.implicit.enabled` the rating store is built beside `out` and
  converted into the implicit store (`implicit.convert_store`).
  """
  spec = implicit.spec_of(data_config)
  if data_config.name != "synthetic":
    _source_root(data_config)  # a bad name or root is the first error
  store_lib.refuse_non_store(out)  # before anything is read
  files = ({} if data_config.name == "synthetic" else
           fingerprint.record(data_config.root, _input_names(data_config)))
  if not spec.enabled:
    _prepare_ratings(data_config, out, log)
    store_lib.record_source_files(out, files)
    return
  out = os.path.abspath(os.fspath(out))
  parent, name = os.path.split(out)
  os.makedirs(parent, exist_ok=True)
  prefix = f".{name}.ratings-"
  # One builder of the rating store at a time: a second one would remove
  # the first's half-built store as a killed run's (the store's own
  # writer, `atomic.Folder`, holds `.NAME.lock` only while converting).
  with atomic.Exclusive(os.path.join(parent, f".{name}.ratings.lock"), out):
    atomic.remove_stale(os.path.join(parent, prefix))  # a killed run's
    ratings = tempfile.mkdtemp(prefix=prefix, dir=parent)
    rating_store = os.path.join(ratings, "store")
    # Its log and a failed write name the store this builds from it, not
    # the temporary one (gone by the time the message is read).
    said = log and (lambda m: log(m.replace(rating_store, out)))
    try:
      try:
        _prepare_ratings(data_config, rating_store, said)
      except OutputError as e:
        raise OutputError(e.path.replace(rating_store, out), e.cause) from e
      source = store_lib.open_store(rating_store)
      _refuse_no_positives(source, float(spec.threshold))
      note = _every_rating_positive(source, float(spec.threshold))
      manifest = implicit.convert_store(source, out,
                                        threshold=float(spec.threshold),
                                        notes=[note] if note else [])
    finally:
      shutil.rmtree(ratings, ignore_errors=True)
  store_lib.record_source_files(out, files)
  if log is not None:
    info = manifest["implicit"]
    log(f"implicit: {info['positives']:,} positives"
        f" ({describe.positive_rule(manifest)}) of"
        f" {info['interactions']:,} interactions")
    if note:
      log(note)


def _input_names(data_config) -> list[str]:
  """The files of `data.root` that the dataset's loader may read."""
  if data_config.name == "generic":
    spec = generic.spec_of(data_config)
    return [getattr(spec, key) for key in _GENERIC_FILES
            if getattr(spec, key)]
  extra = (["movies_extrainfos.dat"] if data_config.name == "movielens-1m"
           else [])  # read where it is there
  return list(_NEEDS.get(data_config.name, ())) + extra


def _refuse_no_positives(source: store_lib.TaskStore,
                         threshold: float) -> None:
  """Refuses a threshold above every rating: the store would hold no
  positive, and training would then blame the users' rating counts."""
  ratings = np.asarray(source.ratings)
  if len(ratings) and not (ratings >= threshold).any():
    raise InputError(
        f"data.implicit.threshold={threshold:g} is above every rating (the"
        f" highest is {ratings.max():g}), so no interaction is a positive:"
        " lower data.implicit.threshold")


def _every_rating_positive(source: store_lib.TaskStore,
                           threshold: float) -> str | None:
  """The store note where ratings of several values are all positives
  (`data.implicit.threshold`, 0 by default, at or below every one): a
  named rating column that tells nothing, likely a forgotten threshold (a
  0/1 purchase flag read as every view a purchase)."""
  ratings = np.asarray(source.ratings)
  if not len(ratings) or ratings.min() < threshold:
    return None
  low, high = float(ratings.min()), float(ratings.max())
  if low == high:
    return None
  return (f"data.implicit.threshold={threshold:g} is at or below every"
          f" rating ({low:g} to {high:g}): every rating is a positive and"
          " the rating column tells nothing; set the rating that makes a"
          f" positive (e.g. data.implicit.threshold={high:g}), or name no"
          " rating column if every line is one")


def _prepare_ratings(data_config, out: str | os.PathLike,
                     log: Callable[[str], None] | None = None) -> None:
  """Builds the (rating) task store of `data_config` at `out`."""
  name = data_config.name
  if name == "synthetic":
    synthetic.generate(synthetic.spec_of(data_config), out, log=log)
    return
  root = _source_root(data_config)
  pad = {k: int(v) for k, v in data_config.list_pad.items()}
  if name == "movielens-1m":
    movielens.load(root, out, list_pad=pad, log_fn=log)
  elif name == "movielens-100k":
    movielens100k.load(root, out, list_pad=pad, log_fn=log)
  else:
    spec = generic.spec_of(data_config)
    if not spec.rating_col and not implicit.spec_of(data_config).enabled:
      raise InputError("data.generic.rating_col is empty (a file without"
                       " ratings) but data.implicit.enabled is false")
    try:
      generic.load(spec, root, out, list_pad=pad, log_fn=log,
                   ratings_predicted=not implicit.spec_of(data_config).enabled)
    except delimited.NotInEncoding as e:  # Latin-1 dumps are common
      raise InputError(f"{e.problem} (another encoding? set it, e.g."
                       " data.generic.encoding=latin-1)", path=e.path,
                       line=e.line) from None


def _check_generic_files(spec, root: str) -> None:
  """Raises InputError naming the `data.generic` key of a named input file
  missing from `root` (a bare "no such file" left a shop's `stars.csv`
  unexplained: nothing said that `data.generic.ratings` names it)."""
  for key in _GENERIC_FILES:
    name = getattr(spec, key)
    path = os.path.join(root, name)
    if name and not os.path.isfile(path):
      raise InputError(f"no such file (data.generic.{key}={name!r}: the"
                       " name of a file in data.root)", path=path)


def _source_root(data_config) -> str:
  """The folder of a file-based dataset's input files, checked to exist
  and to hold the files the dataset's loader needs (`check_source` runs
  it before a command creates anything)."""
  name = data_config.name
  if name not in DATASETS:
    raise InputError(f"data.name must be one of {', '.join(DATASETS)}, got"
                     f" {name!r}")
  root = data_config.root
  if not root:
    raise InputError(f"data.root is required for {name}: the folder of its"
                     " files (--config.data.root=DIR; `metarec data fetch`"
                     " downloads MovieLens)")
  if os.path.isfile(root):  # the ratings file itself, as a newcomer gives it
    raise InputError("data.root is a file, not a folder: give its folder as"
                     " data.root" + (" and its name as data.generic.ratings"
                                     if name == "generic" else ""), path=root)
  if not os.path.isdir(root):
    raise InputError("data.root is not a folder", path=root)
  if name == "generic":
    _check_generic_files(generic.spec_of(data_config), root)
  else:
    _check_layout(name, root)
  return root


# The files each MovieLens loader reads (their absence, in a folder of
# another release, was a bare "users.dat: no such file").
_NEEDS = {"movielens-1m": ("users.dat", "movies.dat", "ratings.dat"),
          "movielens-100k": ("u.data", "u.user", "u.item", "u.genre",
                             "u.occupation")}
_GENERIC = "data.name=generic, data.generic.rating_min=0.5"
# (files that mark a release, the release, what reads it): first match.
_LAYOUTS = (
    (("u.data",), "MovieLens-100K", "movielens-100k"),
    (("users.dat", "ratings.dat"), "MovieLens-1M", "movielens-1m"),
    (("ratings.dat", "movies.dat", "tags.dat"),
     "MovieLens-10M (ratings.dat without users.dat)",
     "no MovieLens loader reads it (no user table): read ratings.dat with"
     f" {_GENERIC}, .ratings=ratings.dat, .delimiter=::, .header=false,"
     " .user_col=0, .item_col=1, .rating_col=2, .timestamp_col=3"),
    (("ratings.csv", "movies.csv"),
     "MovieLens-20M/25M/32M/latest (ratings.csv)",
     "no MovieLens loader reads it (no user table): read it with"
     f" {_GENERIC}, .user_col=userId, .item_col=movieId,"
     " .timestamp_col=timestamp"),
)


def _check_layout(name: str, root: str) -> None:
  """Raises InputError where a MovieLens loader's files are missing from
  `root` because it holds another MovieLens release (saying which, and
  what reads it) or holds the files one folder down (an unpacked zip's
  `ml-1m/`). Other missing files are the loader's own error."""
  needs = _NEEDS.get(name, ())
  missing = [f for f in needs if not os.path.isfile(os.path.join(root, f))]
  if not missing:
    return
  for marks, release, reader in _LAYOUTS:
    if all(os.path.isfile(os.path.join(root, f)) for f in marks):
      if reader == name:
        return  # this loader's release, a file short: its own error
      if reader in _NEEDS:
        reader = f"data.name={reader} reads it"
      raise InputError(f"no {missing[0]}: the folder holds {release}, not"
                       f" {name}; {reader}", path=root)
  try:
    subs = sorted(os.listdir(root))
  except OSError:
    return  # an unlistable folder: the loader names its first file
  for sub in subs:
    if all(os.path.isfile(os.path.join(root, sub, f)) for f in needs):
      raise InputError(f"no {missing[0]} here, but {sub}/ holds the {name}"
                       f" files: set data.root={os.path.join(root, sub)}",
                       path=root)


def check_source(data_config, workdir: str | os.PathLike, *,
                 force: bool = False) -> None:
  """Checks, in a blink, what `ensure_store` needs: a store to open, or the
  inputs to build it from (a missing `data.root` fails here, before a
  command creates its work directory or starts JAX). `force`: the inputs,
  also where a store is there (to be built again)."""
  path = store_path(data_config, workdir)
  if not force and os.path.exists(os.path.join(path, "manifest.json")):
    return
  if data_config.store and data_config.name != "synthetic":
    raise InputError(_NO_STORE, path=path)
  if data_config.name == "synthetic":
    synthetic.spec_of(data_config)
  else:
    _source_root(data_config)


_NO_STORE = ("no task store here; build it with `metarec data prepare` or"
             " leave data.store empty")


def ensure_store(data_config, workdir: str | os.PathLike,
                 log: Callable[[str], None] | None = None, *,
                 rebuild_stale: bool = False) -> store_lib.TaskStore:
  """Opens the configured store, building it first when it is missing.

  `rebuild_stale`: the work directory's own store is built again where it
  no longer follows `data_config` (`store_checks.stale`: its files or
  settings changed); for a start that saved no checkpoint yet, which
  trained on nothing. The new store replaces the old one only once built.
  """
  path = store_path(data_config, workdir)
  why = store_checks.stale(data_config, workdir) if rebuild_stale else ""
  if why or not os.path.exists(os.path.join(path, "manifest.json")):
    check_source(data_config, workdir, force=bool(why))
    if log is not None:
      log(f"building the {data_config.name} task store in {path}"
          + (f" again: the one there no longer follows the data ({why}), and"
             " no checkpoint was saved from it" if why else ""))
    prepare(data_config, path, log=log)
  store = store_lib.open_store(path)
  store_checks.refuse_other_store(data_config, store, path)
  return store
