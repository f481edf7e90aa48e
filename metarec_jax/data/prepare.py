"""`data` config -> task store: build it once, open it afterwards."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from metarec_jax.data import store as store_lib
from metarec_jax.data import synthetic
from metarec_jax.errors import InputError

DATASETS = ("synthetic",)


def synthetic_spec(data_config) -> synthetic.SyntheticSpec:
  """The generator spec of a `data` config section."""
  fields = {f.name for f in dataclasses.fields(synthetic.SyntheticSpec)}
  given = dict(data_config.get("synthetic", {}))
  unknown = sorted(set(given) - fields)
  if unknown:
    raise InputError(f"unknown key(s) data.synthetic.{', '.join(unknown)};"
                     f" known: {', '.join(sorted(fields))}")
  pad = dict(data_config.get("list_pad", {}))
  for name in ("genre", "director", "actor"):
    if name in pad:
      given.setdefault(f"{name}_len", int(pad[name]))
  return synthetic.SyntheticSpec(**given)


def prepare(data_config, out: str | os.PathLike,
            log: Callable[[str], None] | None = None) -> None:
  """Builds the task store of `data_config` (a `data` section) at `out`."""
  name = data_config.name
  if name == "synthetic":
    synthetic.generate(synthetic_spec(data_config), out, log=log)
    return
  raise InputError(f"data.name must be one of {', '.join(DATASETS)}, got"
                   f" {name!r}")


def store_path(data_config, workdir: str | os.PathLike) -> str:
  return data_config.store or os.path.join(os.fspath(workdir), "store")


def ensure_store(data_config, workdir: str | os.PathLike,
                 log: Callable[[str], None] | None = None
                 ) -> store_lib.TaskStore:
  """Opens the configured store, building it first when it is missing."""
  path = store_path(data_config, workdir)
  if not os.path.exists(os.path.join(path, "manifest.json")):
    if data_config.store and data_config.name != "synthetic":
      raise InputError("no task store here; build it with `metarec data"
                       " prepare` or leave data.store empty", path=path)
    if log is not None:
      log(f"building the {data_config.name} task store in {path}")
    prepare(data_config, path, log=log)
  store = store_lib.open_store(path)
  if store.manifest["dataset"] != data_config.name:
    raise InputError(
        f"the store holds {store.manifest['dataset']!r} data but data.name is"
        f" {data_config.name!r}", path=path)
  return store
