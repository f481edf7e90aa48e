"""`metarec data ACTION`: its flags and its four actions.

    fetch   --dataset=movielens-1m|movielens-100k --dest=DIR [--url --md5]
    prepare --dataset=NAME --root=DIR --out=STORE, or --config=FILE --out=STORE
    synth   --out=STORE --num_users=N [--num_items --min_ratings ...]
    inspect --store=STORE

`metarec_jax.cli` parses the command line and calls `run`; each action
prints its human-readable lines and returns the JSON object the command
line prints last.
"""

from __future__ import annotations

import logging

from absl import flags

from metarec_jax import config_io, config_reference
from metarec_jax.errors import InputError, require_flag

log = logging.getLogger("metarec")


def define_flags(fv: flags.FlagValues) -> None:
  """Defines the flags of every action in `fv`."""
  flags.DEFINE_string("dataset", None, "fetch: movielens-1m or movielens-100k;"
                      " prepare: the data.name to build (movielens-1m,"
                      " movielens-100k, generic, synthetic).", flag_values=fv)
  flags.DEFINE_string("dest", None, "fetch: the folder to create; it becomes"
                      " the dataset's data.root.", flag_values=fv)
  flags.DEFINE_string("url", None, "fetch: download from this address"
                      " instead of GroupLens (needs --md5).", flag_values=fv)
  flags.DEFINE_string("md5", None, "fetch: the zip's expected MD5.",
                      flag_values=fv)
  flags.DEFINE_string("root", None, "prepare: the folder of the dataset's"
                      " files (data.root).", flag_values=fv)
  flags.DEFINE_string("out", None, "prepare, synth: the task store folder to"
                      " write.", flag_values=fv)
  flags.DEFINE_string("store", None, "inspect: a task store folder.",
                      flag_values=fv)
  flags.DEFINE_integer("num_users", None, "synth: number of users.",
                       flag_values=fv)
  flags.DEFINE_integer("num_items", None, "synth: number of items.",
                       flag_values=fv)
  flags.DEFINE_integer("min_ratings", None, "synth: fewest ratings per user.",
                       flag_values=fv)
  flags.DEFINE_integer("max_ratings", None, "synth: most ratings per user.",
                       flag_values=fv)
  flags.DEFINE_integer("seed", None, "synth: the generator's seed.",
                       flag_values=fv)


_SYNTH_SPEC_FLAGS = ("num_users", "num_items", "min_ratings", "max_ratings",
                     "seed")
ACTIONS = {  # action -> the flags it takes
    "fetch": ("dataset", "dest", "url", "md5"),
    "prepare": ("dataset", "root", "out"),
    "synth": ("out",) + _SYNTH_SPEC_FLAGS,
    "inspect": ("store",),
}


def _fetch(fv) -> dict:
  from metarec_jax.data.convert import fetch  # pylint: disable=g-import-not-at-top
  dest = fetch.fetch(require_flag(fv, "dataset"), require_flag(fv, "dest"),
                     url=fv["url"].value, md5=fv["md5"].value, log=log.info)
  print(f"{fv['dataset'].value} files are in {dest}")
  print(f"next: metarec data prepare --dataset={fv['dataset'].value}"
        f" --root={dest} --out=STORE")
  return {"dataset": fv["dataset"].value, "dest": dest}


def _prepare(fv, config_file, overrides) -> dict:
  from metarec_jax.data import store as store_lib  # pylint: disable=g-import-not-at-top
  from metarec_jax.data.convert import prepare  # pylint: disable=g-import-not-at-top
  out = require_flag(fv, "out")
  if config_file:
    config = config_io.apply_overrides(
        config_io.load_config_file(config_file), overrides)
    # Only the data section's relations: preparing a store builds no model,
    # so a model key (model.loss) is no reason to refuse it.
    config_reference.validate(config, sections=("data",))
    data = config.data
  elif overrides:
    raise InputError("--config.KEY=VALUE needs --config=FILE")
  else:
    data = config_io.complete({"data": {
        "name": require_flag(fv, "dataset"),
        "root": require_flag(fv, "root")}}).data
  if fv["dataset"].value:
    data.name = fv["dataset"].value
  if fv["root"].value:
    data.root = fv["root"].value
  earlier = store_lib.is_store(out)
  prepare.prepare(data, out, log=log.info)
  if earlier:  # gone now: a run trained on it refuses this one
    log.info("replaced the earlier task store at %s", out)
  return _inspect(out, quiet=True)


def _synth(fv) -> dict:
  from metarec_jax.data.convert import synthetic  # pylint: disable=g-import-not-at-top
  out = require_flag(fv, "out")
  given = {k: fv[k].value for k in _SYNTH_SPEC_FLAGS
           if fv[k].value is not None}
  if "num_users" not in given:
    raise InputError("--num_users is required")
  try:
    spec = synthetic.SyntheticSpec(**given)
  except ValueError as e:
    raise InputError(str(e)) from None
  if spec.num_users < 1 or spec.num_items < 1 or not (
      1 <= spec.min_ratings <= spec.max_ratings):
    raise InputError("--num_users and --num_items must be positive and"
                     " 1 <= --min_ratings <= --max_ratings")
  if spec.min_ratings > spec.num_items:  # a user rates an item once
    raise InputError(f"--min_ratings={spec.min_ratings} must not exceed"
                     f" --num_items={spec.num_items} (a user rates an item"
                     " once)")
  if spec.seed < 0:  # numpy's generators take no other
    raise InputError(f"--seed must be >= 0, got {spec.seed}")
  synthetic.generate(spec, out, log=log.info)
  return _inspect(out, quiet=True)


def _inspect(path: str, quiet: bool = False) -> dict:
  # pylint: disable=g-import-not-at-top
  from metarec_jax.data import store as store_lib
  from metarec_jax.data.convert import describe
  summary = describe.summary(store_lib.open_store(path))
  if quiet:
    print(f"wrote the {summary['dataset']} task store to {summary['store']}:"
          f" {summary['users']:,} users, {summary['items']:,} items,"
          f" {summary['ratings']:,} ratings")
  else:
    print(describe.format_summary(summary))
  return summary


def run(args: list[str], fv: flags.FlagValues, config_file: str | None,
        overrides: list[tuple[str, str]]) -> dict:
  """Runs `metarec data ARGS` (one action) with the flags `fv`.

  Returns:
    The JSON object the command line prints last.

  Raises:
    InputError: no or an unknown action, a flag the action does not take,
      a missing flag or bad input.
  """
  if len(args) != 1 or args[0] not in ACTIONS:
    got = " ".join(args) or "nothing"
    raise InputError(f"expected one action, {' | '.join(ACTIONS)}; got"
                     f" {got}")
  action = args[0]
  allowed = ACTIONS[action]
  for name in ("dataset", "dest", "url", "md5", "root", "out", "store",
               "num_users", "num_items", "min_ratings", "max_ratings",
               "seed"):
    if fv[name].present and name not in allowed:
      raise InputError(f"--{name} does not apply to `metarec data {action}`"
                       f" (it takes {', '.join('--' + a for a in allowed)})")
  if (config_file or overrides) and action != "prepare":
    raise InputError(f"`metarec data {action}` takes no --config flags")
  if action == "fetch":
    return _fetch(fv)
  if action == "prepare":
    return _prepare(fv, config_file, overrides)
  if action == "synth":
    return _synth(fv)
  return _inspect(require_flag(fv, "store"))
