"""What each `metarec` command says about itself: summary, help, flags.

`metarec_jax.cli` parses a command line with the command's flags (absl)
and calls its runner; `metarec data`'s flags are defined by
`metarec_jax.data.convert.command`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable

from absl import flags

from metarec_jax.errors import InputError


@dataclasses.dataclass
class Command:
  """A command's help, flags and (in `cli.COMMANDS`) runner."""

  summary: str
  description: str
  define: Callable[[flags.FlagValues], None]
  takes_config: bool = False
  # With `takes_config`: `--config=FILE` too (`eval` and `export` read the
  # work directory's), and the override the help shows as an example.
  config_file: bool = True
  example_override: str = "train.num_steps=100"
  positional: bool = False  # takes words besides flags (`data ACTION`)
  # `run(invocation) -> exit status`, set by `metarec_jax.cli`.
  run: Callable | None = None


def define_train(fv: flags.FlagValues) -> None:
  """Defines `metarec train`'s flags in `fv`."""
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
  flags.DEFINE_integer("join_timeout", 300, "Multi-process runs: seconds to"
                       " wait for every process to join before exiting with"
                       " status 2 and what to check.", flag_values=fv)
  flags.DEFINE_float("peer_timeout", 60, "Multi-process runs: seconds a"
                     " process may go unheard (killed, its host lost) before"
                     " the others exit with status 1 and one line naming it"
                     " (JAX itself aborts after 100 s).", flag_values=fv)


def define_eval(fv: flags.FlagValues) -> None:
  """Defines `metarec eval`'s flags in `fv`."""
  flags.DEFINE_string("workdir", None, "Work directory of a `metarec train`"
                      " run.", flag_values=fv)
  # (lower_bound: a negative step was refused only by the checkpoint
  # lookup, after the store and a --ratings file had been read)
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default:"
                       " the best validated one, else the newest).",
                       lower_bound=0, flag_values=fv)
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


def define_bench(fv: flags.FlagValues) -> None:
  """Defines `metarec bench`'s flags in `fv`."""
  flags.DEFINE_integer("steps", 20, "Timed meta-steps.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("warmup", 3, "Untimed meta-steps first (after"
                       " compilation).", lower_bound=0, flag_values=fv)
  flags.DEFINE_string("workdir", None, "Where the synthetic store is built"
                      " (default: a cache folder per data config).",
                      flag_values=fv)
  flags.DEFINE_boolean("plain_flops", True, "Also count the plain"
                       " formulation's FLOPs (meta.dual_form=false; one more"
                       " lowering).", flag_values=fv)


def define_export(fv: flags.FlagValues) -> None:
  """Defines `metarec export`'s flags in `fv`."""
  flags.DEFINE_string("workdir", None, "Work directory of a `metarec train`"
                      " run (its config and, unless --step says, its best"
                      " validated checkpoint, else the newest).",
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
                       " best validated one, else the newest).",
                       lower_bound=0, flag_values=fv)
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


def define_serve(fv: flags.FlagValues) -> None:
  """Defines `metarec serve`'s flags in `fv`."""
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
  flags.DEFINE_float("read_timeout_s", 30.0, "Seconds a client has to send a"
                     " whole request, from its first byte (or from"
                     " connecting); a slower one gets a 408 and is closed.",
                     flag_values=fv)
  flags.DEFINE_integer("rank_cache", 100_000, "Users whose top max_k is kept"
                       " until they learn (0: rank every request on the"
                       " device); an export written with --top_k=K preloads"
                       " its users' top K.", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("adapted_cache", 10_000, "Users taught at serving"
                       " time whose adapted model is held in memory; the"
                       " least recently served beyond it are re-adapted on"
                       " their ratings when next asked for.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_boolean("access_log", False, "Log every request to stderr.",
                       flag_values=fv)


def define_plot(fv: flags.FlagValues) -> None:
  """Defines `metarec plot`'s flags in `fv`."""
  flags.DEFINE_string("workdir", None, "Work directory of a `metarec train`"
                      " run; the figures go to WORKDIR/plots/.",
                      flag_values=fv)


def define_data(fv: flags.FlagValues) -> None:
  """Defines `metarec data`'s flags in `fv` (`data.command`)."""
  from metarec_jax.data.convert import command  # pylint: disable=g-import-not-at-top
  command.define_flags(fv)


COMMANDS: dict[str, Command] = {  # in the order `metarec --help` lists them
    "train": Command(
        "meta-train a model (resumes from the newest checkpoint)",
        "Meta-trains the config's model on its data in --workdir. With a"
        " checkpoint in --workdir it resumes, and --config may be omitted.",
        define_train, takes_config=True),
    "eval": Command(
        "evaluate a checkpoint on the cold-start scenarios",
        "Adapts the meta-parameters to every task's support set and reports"
        " MAE, RMSE, nDCG@1 and nDCG@3 of the query ratings per scenario (W,"
        " UC, IC, UIC), beside the unadapted model and two model-free"
        " baselines. With --ratings=FILE the users of that file are"
        " evaluated as new users. The last line of stdout is the JSON"
        " report.",
        define_eval, takes_config=True, config_file=False,
        example_override="eval.batch_tasks=64"),
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
        define_export, takes_config=True, config_file=False,
        example_override="data.max_support=100"),
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
        define_data, takes_config=True, positional=True,
        example_override="data.generic.delimiter=;"),
    "serve": Command(
        "serve an export over HTTP, learning from new interactions",
        "Serves --export as a JSON API: GET /healthz, GET"
        " /v1/users/USER/recommendations?k=K, POST /v1/predict {user, items},"
        " POST /v1/users/USER/interactions {ratings: [[item, rating], ...]}"
        " (logged and fsynced to --log_dir, then the user is re-adapted),"
        " POST /v1/adapt {ratings, k} (anonymous, nothing kept); OpenAPI"
        " docs at /docs (with a token: the schema at /openapi.json, behind"
        " it). Concurrent requests are batched into one device call. The log is in the dataset's input format: feed it back to"
        " `metarec train`/`metarec export` (see the README's Serving"
        " section).",
        define_serve),
    "bench": Command(
        "measure meta-step throughput and utilisation",
        "Runs the config's real meta-step (input pipeline, sharding,"
        " chunking) for --warmup then --steps timed steps and reports"
        " tasks/s, XLA's FLOPs of the step, achieved GFLOP/s against the"
        " dense float32 matmul rate measured in the same process, compile"
        " time, input wait and peak memory. Try"
        " --config=configs/melu_ref.py. The last line of stdout is JSON.",
        define_bench, takes_config=True),
    "plot": Command(
        "draw learning and support-size curves of a run as PNGs",
        "Writes WORKDIR/plots/learning_curves.png (training loss and"
        " validation MAE before and after adaptation against the step, from"
        " metrics.jsonl) and WORKDIR/plots/support_curve.png (query MAE"
        " against support-set size, from eval/support_curve.json). The last"
        " line of stdout is JSON: {\"plots\": [paths]}.",
        define_plot),
}


# Flags and config keys that name files or folders. The shell expands a
# leading `~` only where a word starts with it, not after `--flag=`:
# `--workdir=~/run` made a folder named `~` in the current one (which a
# later `rm -rf ~` would take for the home folder). These expand it as the
# shell would have.
PATH_FLAGS = ("workdir", "ratings", "write_tasks", "out", "export",
              "log_dir", "token_file", "dest", "root", "store")
PATH_KEYS = ("data.root", "data.store", "distill.teacher")


def home_expanded(path):
  """`path` with a leading `~` or `~user` expanded (other values as they
  are)."""
  if isinstance(path, str) and path.startswith("~"):
    return os.path.expanduser(path)
  return path


def expand_path_flags(fv: flags.FlagValues) -> None:
  """Expands a leading `~` in the parsed `PATH_FLAGS` of `fv`."""
  for name in PATH_FLAGS:
    if name in fv and fv[name].value != home_expanded(fv[name].value):
      fv[name].value = home_expanded(fv[name].value)


def default_note(flag: flags.Flag) -> str:
  """` (default: VALUE)` for `--help`, where the flag has a default its
  help does not state already; a boolean that is on says how to turn it
  off (`--support_curve` read "Also write ...", which is on unless
  `--nosupport_curve`)."""
  value = flag.default
  if value is None or value == "" or "(default" in flag.help:
    return ""
  if isinstance(value, bool):
    return (f" (default: true; --no{flag.name} turns it off)" if value
            else " (default: false)")
  return f" (default: {value})"


def split_config_args(args: list[str], cmd: Command | None = None):
  """`(config file, [(key, value)], other args)`: `--config=...` and
  `--config.KEY=VALUE` pulled out of `args` (a leading `~` of the file and
  of `PATH_KEYS` expanded).

  A flag or key given twice keeps the last, as absl does: scripts pass
  their defaults first and a run's own values after them
  (`tools/device_bench.sh`).

  Raises:
    InputError: `--config` without `=FILE` or an override without `=`.
  """
  config_file, overrides, rest = None, [], []
  for arg in args:
    if arg == "--config" and (not cmd or cmd.takes_config and cmd.config_file):
      raise InputError("write --config=FILE, with '='", path=arg)  # (absl:
    if arg.startswith("--config=") or arg == "--config":  # "Unknown flag")
      config_file = (home_expanded(arg[len("--config="):])
                     if arg != "--config" else arg)
    elif arg.startswith("--config."):
      key, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        raise InputError("expected --config.KEY=VALUE", path=arg)
      overrides.append((key, home_expanded(value) if key in PATH_KEYS
                        else value))
    else:
      rest.append(arg)
  return config_file, overrides, rest


def flag_problem(error: Exception, fv: flags.FlagValues) -> str:
  """absl's error as one line in the config keys' words: a bad boolean or
  integer flag said `('Non-boolean argument to boolean flag', 'maybe')` or
  `invalid literal for int() with base 10: 'abc'`."""
  text = str(error).splitlines()[0]
  bad = re.match(r"flag --(\w+)=(.*?): ", text)
  if bad and bad.group(1) in fv:
    flag = fv[bad.group(1)]
    kind = {"bool": "true or false", "int": "an integer",
            "float": "a number"}.get(flag.flag_type())
    # A value of another type (a range error already names its bound).
    if kind is not None and re.search(
        r"invalid literal|could not convert|Non-boolean", text):
      return f"--{flag.name}: expected {kind}, got {bad.group(2)!r}"
  return text
