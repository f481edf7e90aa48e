"""Whether an existing task store is the one a run asks for.

A work directory's own store (`WORKDIR/store`) is built once from the files
at `data.root` with the `data` settings of its first start. A later start
with other files or other settings would train on the old store without
a word, so these checks compare: before any checkpoint the store is built
again (`stale`), after one the start is refused (`check_inputs`,
`refuse_other_store`), and `eval` and `export` refuse a store built again
from other files than the run trained on (`check_run_store`). A prepared
`data.store` is the user's choice, checked only for what it holds.
"""

from __future__ import annotations

import dataclasses
import json
import os

from metarec_jax import config_defaults, config_io
from metarec_jax.data import implicit
from metarec_jax.data import store as store_lib
from metarec_jax.data.convert import fingerprint, generic, synthetic
from metarec_jax.errors import InputError


def store_path(data_config, workdir: str | os.PathLike) -> str:
  """Where the store of `data_config` is: `data.store`, else
  `WORKDIR/store`."""
  return data_config.store or os.path.join(os.fspath(workdir), "store")


class StoreMismatch(InputError):
  """A store that does not hold what the config asks for; `mismatch` says
  how, without the advice that follows it in the message."""

  def __init__(self, mismatch: str, advice: str, path: str):
    super().__init__(mismatch + f"; {advice}" * bool(advice), path=path)
    self.mismatch = mismatch


def refuse_other_store(data_config, store: store_lib.TaskStore,
                       path: str) -> None:
  """Raises `StoreMismatch` where the store at `path` does not hold what
  `data_config` asks for: another dataset, ratings for implicit feedback
  (or another threshold), a synthetic store of other settings, or (the
  work directory's own store) one built with other `data.generic` keys or
  another `data.list_pad`."""
  if store.manifest["dataset"] != data_config.name:
    raise StoreMismatch(
        f"the store holds {store.manifest['dataset']!r} data but data.name is"
        f" {data_config.name!r}", "", path)
  spec = implicit.spec_of(data_config)
  built = store.manifest.get("implicit") or {}
  if spec.enabled != bool(built) or (
      built and float(built["threshold"]) != float(spec.threshold)):
    had = (f"implicit feedback (threshold {built['threshold']:g})" if built
           else "ratings")
    want = (f"implicit feedback (threshold {spec.threshold:g})" if
            spec.enabled else "ratings")
    raise StoreMismatch(f"the store holds {had} but the config asks for"
                        f" {want} (data.implicit)", "use another data.store"
                        " or work directory", path)
  if data_config.name == "synthetic":
    wanted = dataclasses.asdict(synthetic.spec_of(data_config))
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


def has_checkpoint(workdir: str | os.PathLike) -> bool:
  """Whether a run in `workdir` saved a checkpoint: trained on its store."""
  folder = os.path.join(workdir, "checkpoints")
  return os.path.isdir(folder) and any(name.isdigit()
                                       for name in os.listdir(folder))


def input_change(data_config, workdir: str | os.PathLike) -> str:
  """The first input file at `data.root` that differs from the one the
  work directory's own store was built from (another root, or the file
  edited since: `fingerprint`), as text; "" where none does, or there is
  no own store with the record."""
  if data_config.name == "synthetic" or data_config.store:
    return ""  # a prepared store is the user's choice
  path = store_path(data_config, workdir)
  try:
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
      recorded = json.load(f).get("source", {}).get("files")
  except (OSError, ValueError, AttributeError):
    return ""  # no store yet (or a damaged one: opening it names that)
  if not recorded:
    return ""  # a store from before the files were recorded
  return fingerprint.first_change(recorded, data_config.root) or ""


def check_inputs(data_config, workdir: str | os.PathLike) -> None:
  """Raises InputError where a run that saved a checkpoint is resumed with
  other input files than its store was built from (`input_change`): it
  would train on the store's copy of the old data, with no more than a
  "changed config" line. (Before any checkpoint the store is built again:
  `stale`.) For `train` only: `eval` and `export` read the run's data, its
  store, whatever became of the files since."""
  change = input_change(data_config, workdir) if has_checkpoint(
      workdir) else ""
  if change:
    path = store_path(data_config, workdir)
    raise InputError(
        f"the store was built from other input files than those in"
        f" {data_config.root} ({change}), and a run trains on its store;"
        " for the new data use a new --workdir; to go on with the data"
        f" the store holds, name it: --config.data.store={path}", path=path)


def stale(data_config, workdir: str | os.PathLike) -> str:
  """Why the work directory's own store no longer follows `data_config`
  (its input files changed, or it was built with other settings:
  `refuse_other_store`), as text; "" where it does, where there is none,
  or where the store is a prepared `data.store`. A start that finds it so
  before any checkpoint was saved builds the store again."""
  path = store_path(data_config, workdir)
  if data_config.store or not os.path.exists(
      os.path.join(path, "manifest.json")):
    return ""
  change = input_change(data_config, workdir)
  if change:
    return f"its input files changed: {change}"
  try:
    refuse_other_store(data_config, store_lib.open_store(path), path)
  except StoreMismatch as e:
    return e.mismatch
  return ""


def check_run_store(data_config, workdir: str | os.PathLike,
                    store: store_lib.TaskStore) -> None:
  """Raises InputError where the store is not built from the input files
  the work directory's run trained on (`config.json`'s `data_files`): its
  own store deleted and built again from files changed since, or the
  prepared `data.store` prepared again from other files. `eval` evaluated
  the run on the new data's users and split, and a resume trained on it,
  without a word. (The same files elsewhere are the same data.)"""
  if not has_checkpoint(workdir):
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
  def recorded(config):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in
            dataclasses.asdict(generic.spec_of(config)).items()}

  wanted = recorded(data_config)
  built = store.manifest.get("source", {}).get("generic", {})
  if built:  # a key added since the store was built: it was built as with
    # the key's default (the behaviour before the key), so `numeric` named
    # now is another store
    built = {**recorded(config_defaults.get_config().data), **built}
  differ = [k for k in wanted if k in built and built[k] != wanted[k]]
  _refuse_other_settings(
      "generic store was built with other data.generic settings", differ,
      built, wanted, "use another work directory, or prepare a store and"
      " name it in data.store", path)


def _refuse_other_settings(what: str, differ: list[str], built: dict,
                           wanted: dict, advice: str, path: str) -> None:
  """Raises `StoreMismatch` naming the first settings in `differ` (the
  store's `built` value and the config's `wanted` one) where there are
  any."""
  if differ:
    raise StoreMismatch(
        f"the {what} ("
        + ", ".join(f"{k}: {built.get(k)!r} there, {wanted[k]!r} now"
                    for k in differ[:4]) + ")", advice, path)
