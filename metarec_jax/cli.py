"""`metarec`: the command line. Thin: parse flags, call one function.

    metarec train  --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]
    metarec eval   --workdir=DIR [--step=N] [--ratings=FILE] [--write_tasks=DIR]
    metarec export --workdir=DIR --ratings=FILE --out=DIR [--top_k=K]
                   [--dtype=float32|bfloat16] [--step=N] [--chunk_users=N]
    metarec serve  --export=DIR [--host=127.0.0.1] [--port=8000]
                   [--log_dir=DIR] [--token-file=FILE] [--max_batch=16] ...
    metarec data   fetch|prepare|synth|inspect --flag=VALUE ...
    metarec plot   --workdir=DIR

Flags are `--name=value` (absl); `--config.KEY=VALUE` overrides any config
key. Logs go to stderr; `eval` (like `bench` and `export`) ends its stdout
with one JSON line. A mistake in a flag, a config or a data file is one line
on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from typing import Callable

from absl import flags

from metarec_jax import config_io
from metarec_jax.errors import InputError, OutputError, cause_of

log = logging.getLogger("metarec")


@dataclasses.dataclass
class Invocation:
  """A parsed command line."""

  flags: flags.FlagValues
  config_file: str | None
  overrides: list[tuple[str, str]]
  args: list[str] = dataclasses.field(default_factory=list)  # positional words


@dataclasses.dataclass
class Command:
  summary: str
  description: str
  define: Callable[[flags.FlagValues], None]
  run: Callable[[Invocation], int]
  takes_config: bool = False
  positional: bool = False  # takes words besides flags (`data ACTION`)


def _define_train(fv):
  flags.DEFINE_string("workdir", None, "Work directory: config.json,"
                      " checkpoints/, tensorboard/, metrics.jsonl. Training"
                      " resumes from its newest checkpoint.", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "Multi-process runs:"
                      " HOST:PORT of process 0 (jax.distributed.initialize)."
                      " Without it a SLURM job of several tasks or a"
                      " multi-host TPU slice is joined automatically.",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "Multi-process runs: the number"
                       " of processes.", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "Multi-process runs: this"
                       " process's index, 0 .. num_processes-1.",
                       flag_values=fv)


def _define_eval(fv):
  flags.DEFINE_string("workdir", None, "Work directory of a `metarec train`"
                      " run.", flag_values=fv)
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default:"
                       " the newest).", flag_values=fv)
  flags.DEFINE_string("ratings", None, "A ratings file in the dataset's input"
                      " format: its users (of the dataset's user table) are"
                      " evaluated as new users (scenarios UC and UIC; W and IC"
                      " are empty). Unknown users or items are errors.",
                      flag_values=fv)
  flags.DEFINE_string("write_tasks", None, "Write each scenario's support and"
                      " query ratings to DIR/<scenario>/support.EXT and"
                      " query.EXT, in the dataset's input format.",
                      flag_values=fv)
  flags.DEFINE_boolean("support_curve", True, "Also write the query MAE"
                       " against support-set size of every scenario to"
                       " WORKDIR/eval/support_curve.json (re-evaluates each"
                       " scenario with its support sets cut to 1, 2, 4, ..."
                       " ratings).", flag_values=fv)


def _define_bench(fv):
  flags.DEFINE_integer("steps", 20, "Timed meta-steps.", flag_values=fv)
  flags.DEFINE_integer("warmup", 3, "Untimed meta-steps first (after"
                       " compilation).", flag_values=fv)
  flags.DEFINE_string("workdir", None, "Where the synthetic store is built"
                      " (default: a cache folder per data config).",
                      flag_values=fv)
  flags.DEFINE_boolean("plain_flops", True, "Also count the plain"
                       " formulation's FLOPs (meta.dual_form=false; one more"
                       " compilation).", flag_values=fv)


def _run_bench(inv: Invocation) -> int:
  if not inv.config_file:
    raise InputError("--config is required (e.g. configs/melu_ref.py)")
  config = config_io.apply_overrides(
      config_io.load_config_file(inv.config_file), inv.overrides)
  check_config(config)
  # No persistent compilation cache: compile_seconds must be the real cost.
  setup_runtime(config, compilation_cache=False)
  from metarec_jax import bench  # pylint: disable=g-import-not-at-top
  result = bench.run(config, workdir=inv.flags["workdir"].value,
                     steps=inv.flags["steps"].value,
                     warmup=inv.flags["warmup"].value,
                     plain_flops=inv.flags["plain_flops"].value)
  w = result["workload"]
  print(f"{w['tasks_per_step']} tasks/step, {w['devices']} {w['backend']}"
        f" device(s), chunk {w['chunk_tasks']}, support {w['support_width']},"
        f" {w['inner_steps']} inner steps,"
        f" {'second' if w['second_order'] else 'first'} order,"
        f" {w['compute_dtype']}")
  plain = w["plain_flops_per_task"]
  print(f"  {result['tasks_per_sec']:.0f} tasks/s,"
        f" {result['step_seconds'] * 1e3:.1f} ms/step,"
        f" {w['flops_per_task'] / 1e6:.1f} MFLOP/task"
        + ("" if plain is None else
           f" (plain formulation {plain / 1e6:.1f})"))
  print(f"  {result['achieved_gflops']:.1f} GFLOP/s of"
        f" {result['peak_gflops']:.1f} {w['compute_dtype']} matmul peak:"
        f" utilization"
        f" {result['utilization']:.1%}; compile"
        f" {result['compile_seconds']:.1f}s; input wait"
        f" {result['input_wait_fraction']:.1%}; peak RSS"
        f" {result['peak_rss_mb']:.0f} MB")
  print_json(result)
  return 0


def _define_export(fv):
  flags.DEFINE_string("workdir", None, "Work directory of a `metarec train`"
                      " run (its config and newest checkpoint).",
                      flag_values=fv)
  flags.DEFINE_string("ratings", None, "A ratings file in the dataset's input"
                      " format: every user in it is adapted on its ratings"
                      " (the most recent data.max_support of them) and"
                      " exported.", flag_values=fv)
  flags.DEFINE_string("out", None, "The export folder to write (.npy arrays"
                      " and manifest.json); an earlier export there is"
                      " replaced atomically.", flag_values=fv)
  flags.DEFINE_integer("top_k", 0, "Also write each user's K best unrated"
                       " items to OUT/topk.jsonl (0: none).", flag_values=fv)
  flags.DEFINE_string("dtype", "float32", "Storage dtype of the per-user"
                      " adapted parameters: float32 or bfloat16.",
                      flag_values=fv)
  flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the"
                       " newest).", flag_values=fv)
  flags.DEFINE_integer("chunk_users", 256, "Users adapted per device call"
                       " (bounds memory; rounded up to a multiple of the"
                       " device count).", flag_values=fv)
  flags.DEFINE_string("unknown_users", "serve", "Users not in the dataset's"
                      " user table: serve (export them with missing user"
                      " features, flagged) or skip (leave them out, counted"
                      " in skipped_users).", flag_values=fv)
  flags.DEFINE_boolean("verify", False, "Instead of exporting, check the"
                       " export at --out: every file, whole, against the"
                       " sizes and SHA-256 digests its manifest records"
                       " (about 1.5 s per GB); exit 2 naming the first file"
                       " that differs.", flag_values=fv)


def _verify_export(inv: Invocation) -> int:
  out = _require(inv.flags, "out")
  if inv.flags["workdir"].value or inv.flags["ratings"].value:
    raise InputError("--verify checks the existing export at --out; it takes"
                     " no --workdir or --ratings")
  from metarec_jax import export  # pylint: disable=g-import-not-at-top
  result = export.verify(out)
  print(f"verified {result['files']} files ({result['bytes']:,} bytes) of"
        f" {out} in {result['seconds']:.1f} s: all match the manifest")
  print_json({**result, "out": out})
  return 0


def _define_plot(fv):
  flags.DEFINE_string("workdir", None, "Work directory of a `metarec train`"
                      " run; the figures go to WORKDIR/plots/.",
                      flag_values=fv)


def setup_runtime(config, *, compilation_cache: bool = True) -> None:
  """CPU device split and compilation cache; must run before JAX starts its
  backends."""
  from metarec_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_cpu_devices(int(config.train.cpu_devices),
                                int(config.train.tasks_per_step))
  if compilation_cache:
    runtime.enable_compilation_cache()


def check_config(config, workdir: str | None = None) -> None:
  """The checks that take no time, before JAX starts or anything is
  created: every key's type and range, and (with `workdir`) a task store or
  the input files to build one."""
  from metarec_jax import config_reference  # pylint: disable=g-import-not-at-top
  config_reference.validate(config)
  if workdir is not None:
    from metarec_jax.data import prepare  # pylint: disable=g-import-not-at-top
    prepare.check_source(config.data, workdir)


def _require(fv, name: str) -> str:
  value = fv[name].value
  if not value:
    raise InputError(f"--{name} is required")
  return value


def _run_train(inv: Invocation) -> int:
  workdir = _require(inv.flags, "workdir")
  if inv.config_file:
    config = config_io.load_config_file(inv.config_file)
  elif os.path.exists(os.path.join(workdir, config_io.WORKDIR_CONFIG)):
    config = config_io.read_workdir_config(workdir)
    log.info("no --config: using %s", os.path.join(workdir, "config.json"))
  else:
    raise InputError("--config is required (the work directory has no"
                     " config.json to resume from)")
  config_io.apply_overrides(config, inv.overrides)
  check_config(config, workdir)
  setup_runtime(config)
  from metarec_jax import runtime  # pylint: disable=g-import-not-at-top
  fv = inv.flags
  if runtime.init_distributed(fv["coordinator_address"].value,
                              fv["num_processes"].value,
                              fv["process_id"].value):
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() != 0:  # only process 0 logs progress
      log.setLevel(logging.WARNING)
    log.info("joined a run of %d processes, %d devices", jax.process_count(),
             jax.device_count())
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  summary = train_and_evaluate(config, workdir)
  if summary.get("preempted"):
    return int(config.train.preempt_exit_code)
  if summary.get("finished"):  # the loop said so, and what to run next
    return 0
  # The last validation was logged by the loop; say whether it beat the
  # baseline, then what to do next.
  from metarec_jax.eval import verdicts  # pylint: disable=g-import-not-at-top
  if "val" in summary:
    for line in verdicts.warnings_for({"validation": summary["val"]}):
      log.warning("%s", line)
  log.info("trained to step %d in %s. Next: `metarec eval --workdir=%s`"
           " (the cold-start scenarios against the baselines), `metarec plot"
           " --workdir=%s`, `tensorboard --logdir=%s`", summary["step"],
           workdir, workdir, workdir, os.path.join(workdir, "tensorboard"))
  return 0


def _run_eval(inv: Invocation) -> int:
  workdir = _require(inv.flags, "workdir")
  config = config_io.apply_overrides(config_io.read_workdir_config(workdir),
                                     inv.overrides)
  check_config(config)
  setup_runtime(config)
  from metarec_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  report = eval_lib.evaluate_workdir(
      workdir, step=inv.flags["step"].value, overrides=inv.overrides,
      ratings=inv.flags["ratings"].value,
      write_tasks=inv.flags["write_tasks"].value,
      support_curve=inv.flags["support_curve"].value)
  print(eval_lib.format_table(report))
  print_json(report)
  return 0


def _run_export(inv: Invocation) -> int:
  fv = inv.flags
  if fv["verify"].value:
    return _verify_export(inv)
  workdir = _require(fv, "workdir")
  ratings = _require(fv, "ratings")
  out = _require(fv, "out")
  if inv.config_file:
    raise InputError("export reads the work directory's config; use"
                     " --config.KEY=VALUE to override keys", path="--config")
  config = config_io.apply_overrides(config_io.read_workdir_config(workdir),
                                     inv.overrides)
  check_config(config)
  setup_runtime(config)
  from metarec_jax import export  # pylint: disable=g-import-not-at-top
  summary = export.export_workdir(
      workdir, ratings, out, top_k=fv["top_k"].value, dtype=fv["dtype"].value,
      step=fv["step"].value, chunk_users=fv["chunk_users"].value,
      unknown_users=fv["unknown_users"].value, overrides=inv.overrides)
  print(f"exported {summary['users']:,} users to {summary['out']} in"
        f" {summary['seconds']:.1f} s ({summary['dtype']},"
        f" {summary['bytes_per_user'] or 0:,.0f} bytes per user);"
        f" {summary['flagged_users']:,} flagged, {summary['skipped_users']:,}"
        f" users and {summary['skipped_items']:,} ratings of unknown items"
        " skipped")
  print_json(summary)
  return 0


def _define_serve(fv):
  flags.DEFINE_string("export", None, "The export folder to serve (written by"
                      " `metarec export`).", flag_values=fv)
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (default:"
                      " this machine only).", flag_values=fv)
  flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free one;"
                       " stderr says which).", flag_values=fv)
  flags.DEFINE_string("log_dir", None, "Folder of the interaction log"
                      " (default: EXPORT-interactions beside the export"
                      " folder); replayed at start, locked while serving.",
                      flag_values=fv)
  flags.DEFINE_string("token_file", None, "A file holding a bearer token that"
                      " every endpoint but /healthz requires.",
                      flag_values=fv)
  flags.DEFINE_alias("token-file", "token_file", flag_values=fv)
  flags.DEFINE_integer("max_batch", 16, "Most requests (users) served by one"
                       " device call.", flag_values=fv)
  flags.DEFINE_float("max_wait_ms", 2.0, "Longest wait for more requests to"
                     " join a batch, in milliseconds.", flag_values=fv)
  flags.DEFINE_integer("max_k", 100, "Most recommendations per request.",
                       flag_values=fv)
  flags.DEFINE_integer("max_items", 1000, "Most items per predict request.",
                       flag_values=fv)
  flags.DEFINE_integer("max_ratings", 1000, "Most ratings per interaction or"
                       " adapt request.", flag_values=fv)
  flags.DEFINE_integer("max_body_bytes", 1 << 20, "Largest request body.",
                       flag_values=fv)
  flags.DEFINE_integer("rank_cache", 100_000, "Users whose top max_k is kept"
                       " until they learn (0: rank every request on the"
                       " device); an export written with --top_k=K preloads"
                       " its users' top K.", flag_values=fv)
  flags.DEFINE_boolean("access_log", False, "Log every request to stderr.",
                       flag_values=fv)


def _run_serve(inv: Invocation) -> int:
  # JAX is imported by serve() once it holds the log's lock.
  from metarec_jax import serve  # pylint: disable=g-import-not-at-top
  fv = inv.flags
  names = [f.name for f in dataclasses.fields(serve.Options)]
  return serve.serve(serve.Options(
      export=_require(fv, "export"),
      **{n: fv[n].value for n in names if n != "export"}))


def _define_data(fv):
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
DATA_ACTIONS = {  # action -> the flags it takes
    "fetch": ("dataset", "dest", "url", "md5"),
    "prepare": ("dataset", "root", "out"),
    "synth": ("out",) + _SYNTH_SPEC_FLAGS,
    "inspect": ("store",),
}


def _data_fetch(inv: Invocation) -> dict:
  from metarec_jax.data import fetch  # pylint: disable=g-import-not-at-top
  fv = inv.flags
  dest = fetch.fetch(_require(fv, "dataset"), _require(fv, "dest"),
                     url=fv["url"].value, md5=fv["md5"].value, log=log.info)
  print(f"{fv['dataset'].value} files are in {dest}")
  print(f"next: metarec data prepare --dataset={fv['dataset'].value}"
        f" --root={dest} --out=STORE")
  return {"dataset": fv["dataset"].value, "dest": dest}


def _data_prepare(inv: Invocation) -> dict:
  import ml_collections  # pylint: disable=g-import-not-at-top
  from metarec_jax.data import prepare  # pylint: disable=g-import-not-at-top
  fv = inv.flags
  out = _require(fv, "out")
  if inv.config_file:
    config = config_io.apply_overrides(
        config_io.load_config_file(inv.config_file), inv.overrides)
    check_config(config)
    data = config.data
  elif inv.overrides:
    raise InputError("--config.KEY=VALUE needs --config=FILE")
  else:
    data = ml_collections.ConfigDict({"name": _require(fv, "dataset"),
                                      "root": _require(fv, "root")})
  if fv["dataset"].value:
    data.name = fv["dataset"].value
  if fv["root"].value:
    data.root = fv["root"].value
  prepare.prepare(data, out, log=log.info)
  return _data_inspect_path(out, quiet=True)


def _data_synth(inv: Invocation) -> dict:
  from metarec_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  fv = inv.flags
  out = _require(fv, "out")
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
  synthetic.generate(spec, out, log=log.info)
  return _data_inspect_path(out, quiet=True)


def _data_inspect_path(path: str, quiet: bool = False) -> dict:
  # pylint: disable=g-import-not-at-top
  from metarec_jax.data import describe, store as store_lib
  summary = describe.summary(store_lib.open_store(path))
  if quiet:
    print(f"wrote the {summary['dataset']} task store to {summary['store']}:"
          f" {summary['users']:,} users, {summary['items']:,} items,"
          f" {summary['ratings']:,} ratings")
  else:
    print(describe.format_summary(summary))
  return summary


def _run_data(inv: Invocation) -> int:
  if len(inv.args) != 1 or inv.args[0] not in DATA_ACTIONS:
    got = " ".join(inv.args) or "nothing"
    raise InputError(f"expected one action, {' | '.join(DATA_ACTIONS)}; got"
                     f" {got}")
  action = inv.args[0]
  allowed = DATA_ACTIONS[action]
  for name in ("dataset", "dest", "url", "md5", "root", "out", "store",
               "num_users", "num_items", "min_ratings", "max_ratings",
               "seed"):
    if inv.flags[name].present and name not in allowed:
      raise InputError(f"--{name} does not apply to `metarec data {action}`"
                       f" (it takes {', '.join('--' + a for a in allowed)})")
  if (inv.config_file or inv.overrides) and action != "prepare":
    raise InputError(f"`metarec data {action}` takes no --config flags")
  if action == "fetch":
    result = _data_fetch(inv)
  elif action == "prepare":
    result = _data_prepare(inv)
  elif action == "synth":
    result = _data_synth(inv)
  else:
    result = _data_inspect_path(_require(inv.flags, "store"))
  print_json(result)
  return 0


def _run_plot(inv: Invocation) -> int:
  workdir = _require(inv.flags, "workdir")
  from metarec_jax import plot  # pylint: disable=g-import-not-at-top
  paths = plot.plot_workdir(workdir)
  for path in paths:
    print(path)
  print_json({"plots": paths})
  return 0


COMMANDS: dict[str, Command] = {
    "train": Command(
        "meta-train a model (resumes from the newest checkpoint)",
        "Meta-trains the config's model on its data in --workdir. With a"
        " checkpoint in --workdir it resumes, and --config may be omitted.",
        _define_train, _run_train, takes_config=True),
    "eval": Command(
        "evaluate a checkpoint on the cold-start scenarios",
        "Adapts the meta-parameters to every task's support set and reports"
        " MAE, RMSE, nDCG@1 and nDCG@3 of the query ratings per scenario (W,"
        " UC, IC, UIC), beside the unadapted model and two model-free"
        " baselines. With --ratings=FILE the users of that file are"
        " evaluated as new users. The last line of stdout is the JSON"
        " report.",
        _define_eval, _run_eval, takes_config=True),
    "export": Command(
        "adapt every user of a ratings file and write the parameters",
        "Adapts the meta-parameters of --workdir's checkpoint to every user"
        " of --ratings (each on its most recent data.max_support ratings, in"
        " chunks of --chunk_users users) and writes --out: memory-mappable"
        " .npy arrays and manifest.json, built beside --out and renamed into"
        " place. Serve it with metarec_jax.export.load(DIR). Ratings of"
        " items not in the catalogue are skipped, users not in the user"
        " table are served with missing features (or skipped), and users"
        " with no rating left keep the meta-parameters; all are flagged and"
        " counted. --config.KEY=VALUE overrides the work directory's config"
        " (e.g. --config.data.max_support=100). The last line of stdout is"
        " the JSON summary. `metarec export --verify --out=DIR` checks an"
        " existing export against the checksums in its manifest.",
        _define_export, _run_export, takes_config=True),
    "data": Command(
        "fetch, prepare, synthesise or inspect a dataset's task store",
        "metarec data ACTION --flag=value ...\n\n"
        "  fetch   --dataset=movielens-1m|movielens-100k --dest=DIR"
        " [--url=URL --md5=HEX]\n"
        "          download the GroupLens zip, check its MD5, unpack it into"
        " DIR\n"
        "  prepare --dataset=NAME --root=DIR --out=STORE, or --config=FILE"
        " [--config.KEY=VALUE ...] --out=STORE\n"
        "          build the task store of a dataset's files (the config's"
        " data section)\n"
        "  synth   --out=STORE --num_users=N [--num_items --min_ratings"
        " --max_ratings --seed]\n"
        "          build a synthetic task store\n"
        "  inspect --store=STORE\n"
        "          summarise a task store\n\n"
        "The last line of stdout is a JSON object.",
        _define_data, _run_data, takes_config=True, positional=True),
    "serve": Command(
        "serve an export over HTTP, learning from new interactions",
        "Serves --export as a JSON API: GET /healthz, GET"
        " /v1/users/USER/recommendations?k=K, POST /v1/predict {user, items},"
        " POST /v1/users/USER/interactions {ratings: [[item, rating], ...]}"
        " (logged and fsynced to --log_dir, then the user is re-adapted),"
        " POST /v1/adapt {ratings, k} (anonymous, nothing kept); OpenAPI"
        " docs at /docs. Concurrent requests are batched into one device"
        " call. The log is in the dataset's input format: feed it back to"
        " `metarec train`/`metarec export` (see the README's Serving"
        " section).",
        _define_serve, _run_serve),
    "bench": Command(
        "measure meta-step throughput and utilisation",
        "Runs the config's real meta-step (input pipeline, sharding,"
        " chunking) for --warmup then --steps timed steps and reports"
        " tasks/s, XLA's FLOPs of the step, achieved GFLOP/s against the"
        " dense float32 matmul rate measured in the same process, compile"
        " time, input wait and peak memory. Try"
        " --config=configs/melu_ref.py. The last line of stdout is JSON.",
        _define_bench, _run_bench, takes_config=True),
    "plot": Command(
        "draw learning and support-size curves of a run as PNGs",
        "Writes WORKDIR/plots/learning_curves.png (training loss and"
        " validation MAE before and after adaptation against the step, from"
        " metrics.jsonl) and WORKDIR/plots/support_curve.png (query MAE"
        " against support-set size, from eval/support_curve.json). Needs"
        " matplotlib: pip install 'metarec-jax[plot]'. The last line of"
        " stdout is JSON: {\"plots\": [paths]}.",
        _define_plot, _run_plot),
}


def _json_safe(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def print_json(obj) -> None:
  """The machine-readable last line of stdout (NaN/inf become null)."""
  sys.stdout.flush()
  print(json.dumps(_json_safe(obj), allow_nan=False))
  sys.stdout.flush()


def usage() -> str:
  lines = ["usage: metarec COMMAND [--flag=value ...]", "",
           "Meta-trains personalised recommenders (MAML family) with JAX.",
           "", "commands:"]
  for name, cmd in COMMANDS.items():
    lines.append(f"  {name:<8} {cmd.summary}")
  lines += ["", "`metarec COMMAND --help` describes a command's flags."]
  return "\n".join(lines)


def _command_help(name: str, cmd: Command, fv: flags.FlagValues) -> str:
  words = " ACTION" if cmd.positional else ""
  text = [f"usage: metarec {name}{words} [--flag=value ...]", "",
          cmd.description,
          "", "flags:"]
  if cmd.takes_config:
    text.append("  --config: config file `path.py[:arg]` defining"
                " get_config().")
    text.append("  --config.KEY=VALUE: override one config key (e.g."
                " --config.train.num_steps=100).")
  for flag in fv.get_flags_for_module(sys.modules[__name__]):
    text.append(f"  --{flag.name}: {flag.help}")
  return "\n".join(text)


def _split_config_args(args: list[str]):
  """Pulls `--config=...` and `--config.KEY=VALUE` out of `args`."""
  config_file, overrides, rest = None, [], []
  for arg in args:
    if arg.startswith("--config="):
      config_file = arg[len("--config="):]
    elif arg.startswith("--config."):
      key, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        raise InputError("expected --config.KEY=VALUE", path=arg)
      overrides.append((key, value))
    else:
      rest.append(arg)
  return config_file, overrides, rest


def configure_logging() -> None:
  """The `metarec` logger to stderr, one short line per record."""
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s"
                                         " %(message)s", "%H:%M:%S"))
  log.handlers[:] = [handler]
  log.setLevel(logging.INFO)
  log.propagate = False
  # orbax and absl log every checkpoint file at INFO; keep their warnings.
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("absl").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
  """Entry point of the `metarec` console script; returns the exit status."""
  args = list(sys.argv[1:] if argv is None else argv)
  if not args or args[0] in ("-h", "--help", "help"):
    print(usage())
    return 0 if args else 2
  name, args = args[0], args[1:]
  prog = f"metarec {name}"
  if name not in COMMANDS:
    print(f"metarec: error: unknown command {name!r}; commands:"
          f" {', '.join(COMMANDS)}", file=sys.stderr)
    return 2
  cmd = COMMANDS[name]
  fv = flags.FlagValues()
  cmd.define(fv)
  if any(a in ("-h", "--help", "--helpfull") for a in args):
    print(_command_help(name, cmd, fv))
    return 0
  try:
    config_file, overrides, rest = _split_config_args(args)
    if (config_file or overrides) and not cmd.takes_config:
      raise InputError(f"{prog} takes no --config flags")
    try:
      leftover = fv([prog] + rest)
    except flags.Error as e:
      raise InputError(str(e).splitlines()[0]) from None
    positional = []
    if cmd.positional:
      leftover, positional = leftover[:1], leftover[1:]
    if len(leftover) > 1:
      raise InputError(f"unexpected argument {leftover[1]!r} (flags are"
                       " --name=value)")
    configure_logging()
    return cmd.run(Invocation(fv, config_file, overrides, positional))
  except InputError as e:
    print(f"{prog}: error: {e.message}", file=sys.stderr)
    return 2
  except OutputError as e:  # a full disk, a file-size limit, no permission
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 1
  except OSError as e:  # one the code did not name: still one line
    where = f"{e.filename}: " if e.filename else ""
    print(f"{prog}: error: {where}{cause_of(e)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    from metarec_jax.train import TrainingError  # pylint: disable=g-import-not-at-top
    if isinstance(e, TrainingError):
      print(f"{prog}: error: {e}", file=sys.stderr)
      return 1
    raise


if __name__ == "__main__":
  sys.exit(main())
