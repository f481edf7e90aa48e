"""`data` config -> task store: build it once, open it afterwards."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Callable

import numpy as np

from metarec_jax import atomic, config_io
from metarec_jax.data import store as store_lib
from metarec_jax.data import implicit
from metarec_jax.data.convert import (delimited, fingerprint, generic,
                                      movielens, movielens100k, synthetic)
from metarec_jax.errors import InputError

DATASETS = ("synthetic", "movielens-1m", "movielens-100k", "generic")
# The `data.generic` keys that name input files in data.root.
_GENERIC_FILES = ("ratings", "item_features", "user_features")


def synthetic_spec(data_config) -> synthetic.SyntheticSpec:
  """The generator spec of a `data` config section: `data.synthetic`, its
  list lengths from `data.list_pad`."""
  given = dict(data_config.synthetic)
  for name in ("genre", "director", "actor"):
    if name in data_config.list_pad:
      given.setdefault(f"{name}_len", int(data_config.list_pad[name]))
  return config_io.dataclass_of(synthetic.SyntheticSpec, given,
                                "data.synthetic")


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
    try:
      _prepare_ratings(data_config, os.path.join(ratings, "store"), log)
      source = store_lib.open_store(os.path.join(ratings, "store"))
      _refuse_no_positives(source, float(spec.threshold))
      manifest = implicit.convert_store(source, out,
                                        threshold=float(spec.threshold))
    finally:
      shutil.rmtree(ratings, ignore_errors=True)
  store_lib.record_source_files(out, files)
  if log is not None:
    info = manifest["implicit"]
    # A generic file without a rating column: every line is a positive.
    rule = ("every line" if data_config.name == "generic"
            and not data_config.generic.rating_col
            else f"rating >= {spec.threshold:g}")
    log(f"implicit: {info['positives']:,} positives ({rule}) of"
        f" {info['interactions']:,} interactions")


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


def _prepare_ratings(data_config, out: str | os.PathLike,
                     log: Callable[[str], None] | None = None) -> None:
  """Builds the (rating) task store of `data_config` at `out`."""
  name = data_config.name
  if name == "synthetic":
    synthetic.generate(synthetic_spec(data_config), out, log=log)
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
      generic.load(spec, root, out, list_pad=pad, log_fn=log)
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


def check_source(data_config, workdir: str | os.PathLike) -> None:
  """Checks, in a blink, what `ensure_store` needs: a store to open, or the
  inputs to build it from (a missing `data.root` fails here, before a
  command creates its work directory or starts JAX)."""
  path = store_path(data_config, workdir)
  if os.path.exists(os.path.join(path, "manifest.json")):
    return
  if data_config.store and data_config.name != "synthetic":
    raise InputError(_NO_STORE, path=path)
  if data_config.name == "synthetic":
    synthetic_spec(data_config)
  else:
    _source_root(data_config)


_NO_STORE = ("no task store here; build it with `metarec data prepare` or"
             " leave data.store empty")


def store_path(data_config, workdir: str | os.PathLike) -> str:
  return data_config.store or os.path.join(os.fspath(workdir), "store")


def ensure_store(data_config, workdir: str | os.PathLike,
                 log: Callable[[str], None] | None = None
                 ) -> store_lib.TaskStore:
  """Opens the configured store, building it first when it is missing."""
  path = store_path(data_config, workdir)
  if not os.path.exists(os.path.join(path, "manifest.json")):
    check_source(data_config, workdir)
    if log is not None:
      log(f"building the {data_config.name} task store in {path}")
    prepare(data_config, path, log=log)
  store = store_lib.open_store(path)
  if store.manifest["dataset"] != data_config.name:
    raise InputError(
        f"the store holds {store.manifest['dataset']!r} data but data.name is"
        f" {data_config.name!r}", path=path)
  spec = implicit.spec_of(data_config)
  built = store.manifest.get("implicit") or {}
  if spec.enabled != bool(built) or (
      built and float(built["threshold"]) != float(spec.threshold)):
    had = (f"implicit feedback (threshold {built['threshold']:g})" if built
           else "ratings")
    want = (f"implicit feedback (threshold {spec.threshold:g})" if
            spec.enabled else "ratings")
    raise InputError(f"the store holds {had} but the config asks for {want}"
                     " (data.implicit); use another data.store or work"
                     " directory", path=path)
  if data_config.name == "synthetic":
    wanted = dataclasses.asdict(synthetic_spec(data_config))
    built = store.manifest.get("synthetic", {})
    differ = sorted(k for k in wanted if k != "chunk_users"
                    and built.get(k) != wanted[k])
    _refuse_other_settings(
        "synthetic store was generated with other settings", differ, built,
        wanted, "use another data.store or work directory", path)
  if data_config.name == "generic" and not data_config.store:
    _refuse_other_generic(data_config, store, path)
  if data_config.name != "synthetic" and not data_config.store:
    _refuse_other_list_pad(data_config, store, path)
  return store


def check_inputs(data_config, workdir: str | os.PathLike) -> None:
  """Raises InputError where an input file at `data.root` differs from the
  one the work directory's own store was built from: another root, or the
  file edited since (`fingerprint`). A resumed run would train on the
  store's copy of the old data, with no more than a "changed config" line.
  For `train` only: `eval` and `export` read the run's data, its store,
  whatever became of the files since."""
  if data_config.name == "synthetic" or data_config.store:
    return  # a prepared store is the user's choice
  path = store_path(data_config, workdir)
  try:
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
      recorded = json.load(f).get("source", {}).get("files")
  except (OSError, ValueError, AttributeError):
    return  # no store yet (or a damaged one: opening it names that)
  if not recorded:
    return  # a store from before the files were recorded
  change = fingerprint.first_change(recorded, data_config.root)
  if change:
    raise InputError(
        f"the store was built from other input files than those in"
        f" {data_config.root} ({change}), and a run trains on its store;"
        " for the new data use a new --workdir; to go on with the data"
        f" the store holds, name it: --config.data.store={path}", path=path)


def check_run_store(data_config, workdir: str | os.PathLike,
                    store: store_lib.TaskStore) -> None:
  """Raises InputError where the store is not built from the input files
  the work directory's run trained on (`config.json`'s `data_files`): its
  own store deleted and built again from files changed since, or the
  prepared `data.store` prepared again from other files. `eval` evaluated
  the run on the new data's users and split, and a resume trained on it,
  without a word. (The same files elsewhere are the same data.)"""
  checkpoints = os.path.join(workdir, "checkpoints")
  if not (os.path.isdir(checkpoints)
          and any(name.isdigit() for name in os.listdir(checkpoints))):
    return  # nothing trained yet: a fresh start may take other data
  try:
    with open(os.path.join(workdir, config_io.WORKDIR_CONFIG),
              encoding="utf-8") as f:
      trained = json.load(f).get("data_files")
  except (OSError, ValueError, AttributeError):
    return  # a fresh run; or a damaged config.json, which its reader names
  built = store.manifest.get("source", {}).get("files")
  if not trained or not built:
    return  # a run or a store from before the files were recorded
  change = fingerprint.difference(trained, built)
  if change:
    again = ("prepare data.store again from them" if data_config.store else
             "put them back at data.root and remove the store to build it"
             " again")
    raise InputError(
        "the store was built again from other input files than the run"
        f" trained on ({change}); to read this run, {again}; for the new"
        " data, train in a new --workdir", path=store.path)


def _refuse_other_list_pad(data_config, store: store_lib.TaskStore,
                           path: str) -> None:
  """Raises InputError where the work directory's own store of files was
  built with another `data.list_pad` for one of its list features: a
  resume with another length logged the change and trained on the old
  store's lists. (The synthetic spec holds its lengths.)"""
  built = store.manifest.get("source", {}).get("list_pad")
  if built is None:
    return  # a store from before the lengths were recorded
  # A generic list without an entry is padded to its longest list: an
  # entry added (or removed) is another setting too.
  lists = set(built) | (set(data_config.generic.lists)
                        if data_config.name == "generic" else set())
  wanted = {k: int(data_config.list_pad[k]) if k in data_config.list_pad
            else None for k in lists}
  _refuse_other_settings(
      "store was built with another data.list_pad",
      sorted(k for k in lists if built.get(k) != wanted[k]), built, wanted,
      "use another work directory, or prepare a store and name it in"
      " data.store", path)


def _refuse_other_generic(data_config, store: store_lib.TaskStore,
                          path: str) -> None:
  """Raises InputError where the work directory's own generic store was
  built with other `data.generic` settings than `data_config`'s: a resume
  that named a feature table logged the change and trained on the old
  store, without it. (A prepared `data.store` is the user's choice.)"""
  wanted = {k: list(v) if isinstance(v, tuple) else v for k, v in
            dataclasses.asdict(generic.spec_of(data_config)).items()}
  built = store.manifest.get("source", {}).get("generic", {})
  differ = [k for k in wanted if k in built and built[k] != wanted[k]]
  _refuse_other_settings(
      "generic store was built with other data.generic settings", differ,
      built, wanted, "use another work directory, or prepare a store and"
      " name it in data.store", path)


def _refuse_other_settings(what: str, differ: list[str], built: dict,
                           wanted: dict, advice: str, path: str) -> None:
  """Raises InputError naming the first settings in `differ` (the store's
  `built` value and the config's `wanted` one) where there are any."""
  if differ:
    raise InputError(
        f"the {what} ("
        + ", ".join(f"{k}: {built.get(k)!r} there, {wanted[k]!r} now"
                    for k in differ[:4])
        + f"); {advice}", path=path)
