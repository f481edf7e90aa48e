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
on stderr and exit status 2; memory that ran out, one line and exit 1."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import sys

from absl import flags

from metarec_jax import cli_spec, config_io, errors, interrupts
from metarec_jax.cli_spec import Command
from metarec_jax.errors import InputError, error_line, require_flag

log = logging.getLogger("metarec")


@dataclasses.dataclass
class Invocation:
  """A parsed command line."""

  flags: flags.FlagValues
  config_file: str | None
  overrides: list[tuple[str, str]]
  args: list[str] = dataclasses.field(default_factory=list)  # positional words


def _folder_to_write(path: str | None) -> str | None:
  """`path` (a `--workdir` that a command creates) where it is UTF-8 and
  it, and every folder above it, is a folder or not there yet: a file in
  the way was "File exists" or "Not a directory", exit 1, from deep in
  the run."""
  if path:
    try:  # TensorBoard's file names: a traceback after the store was built
      path.encode("utf-8")
    except UnicodeEncodeError as e:
      byte = ord(path[e.start]) - 0xDC00  # the surrogate of an undecoded byte
      raise InputError(f"not a UTF-8 path (byte 0x{byte:02x} at {e.start}):"
                       f" {path!r}", path="--workdir") from None
    from metarec_jax import atomic  # pylint: disable=g-import-not-at-top
    atomic.refuse_file_in_the_way(path, named="--workdir")
  return path


def _run_bench(inv: Invocation) -> int:
  if not inv.config_file:
    raise InputError("--config is required (e.g. configs/melu_ref.py)")
  config = config_io.apply_overrides(
      config_io.load_config_file(inv.config_file), inv.overrides)
  check_config(config)
  # No persistent compilation cache: compile_seconds must be the real cost.
  setup_runtime(config, compilation_cache=False)
  from metarec_jax import bench  # pylint: disable=g-import-not-at-top
  fv = inv.flags
  result = bench.run(config, workdir=_folder_to_write(fv["workdir"].value),
                     steps=fv["steps"].value, warmup=fv["warmup"].value,
                     plain_flops=fv["plain_flops"].value)
  print(bench.describe(result))
  print_json(result)
  return 0


def _verify_export(inv: Invocation) -> int:
  out = require_flag(inv.flags, "out")
  others = [f"--{name}" for name in inv.flags if inv.flags[name].present
            and name not in ("out", "verify")]  # --step=3: "is it step 3's?"
  if others := others + [f"--config.{key}" for key, _ in inv.overrides]:
    raise InputError("--verify checks the existing export at --out; it takes"
                     f" no {others[0]}")
  from metarec_jax import export  # pylint: disable=g-import-not-at-top
  result = export.verify(out)
  print(f"verified {result['files']} files ({result['bytes']:,} bytes) of"
        f" {out} in {result['seconds']:.1f} s: all match the manifest")
  print_json({**result, "out": out})
  return 0


def setup_runtime(config, *, compilation_cache: bool = True) -> None:
  """CPU device split and compilation cache; must run before JAX starts its
  backends."""
  from metarec_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_cpu_devices(int(config.train.cpu_devices),
                                int(config.train.tasks_per_step),
                                int(config.mesh.model))
  if compilation_cache:
    runtime.enable_compilation_cache()


def check_config(config, workdir: str | None = None, *,
                 saved_in: str | None = None) -> None:
  """The checks that take no time, before JAX starts or anything is
  created: every key's type and range, and (with `workdir`) a task store or
  the input files to build one. `saved_in`: the work directory whose
  config.json `config` was read from (its problems name that file)."""
  from metarec_jax import config_reference  # pylint: disable=g-import-not-at-top
  config_reference.validate_run(config, saved_in)
  if workdir is not None:
    from metarec_jax.data.convert import prepare  # pylint: disable=g-import-not-at-top
    prepare.check_source(config.data, workdir)


def _run_train(inv: Invocation) -> int:
  workdir = _folder_to_write(require_flag(inv.flags, "workdir"))
  from metarec_jax.workdir import layout  # pylint: disable=g-import-not-at-top
  saved_in, saved = None, layout.check(workdir)  # before any work
  if inv.config_file:
    config = config_io.load_config_file(inv.config_file)
  elif saved:
    config, saved_in = config_io.read_workdir_config(workdir), workdir
    log.info("no --config: using %s", saved)
  else:
    raise InputError("--config is required (the work directory has no"
                     " config.json to resume from)")
  config_io.apply_overrides(config, inv.overrides)
  check_config(config, workdir, saved_in=saved_in)
  setup_runtime(config)
  from metarec_jax import cluster  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import resume  # pylint: disable=g-import-not-at-top
  if cluster.init_distributed(*(inv.flags[k].value for k in (
      "coordinator_address", "num_processes", "process_id")),
                              join_timeout=inv.flags["join_timeout"].value,
                              peer_timeout=inv.flags["peer_timeout"].value,
                              config=[config_io.to_dict(config),
                                      resume.as_resumed(config, workdir)]):
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() != 0:  # only process 0 logs progress
      log.setLevel(logging.WARNING)
    log.info("joined a run of %d processes, %d devices", jax.process_count(),
             jax.device_count())
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  try:
    summary = train_and_evaluate(config, workdir)
  except Exception as e:  # pylint: disable=broad-except
    said = error_line(e, "train")
    if said is not None:  # in a joined run, every process stops with it
      cluster.failed("metarec train", *said)
    else:  # a bug: its traceback, and its first line to the others
      cluster.failed_with_bug("metarec train", e)
    raise
  cluster.finished()  # a joined run's others must not take the exit for a death
  if summary.get("preempted"):
    return int(config.train.preempt_exit_code)
  if summary.get("finished"):  # the loop said so, and what to run next
    return 0
  # The validations were logged by the loop; say whether the one `eval`
  # uses by default (the best, else the last) beat the baseline, then what
  # to do next.
  from metarec_jax import models  # pylint: disable=g-import-not-at-top
  from metarec_jax.eval import verdicts  # pylint: disable=g-import-not-at-top
  val = (summary.get("best") or {}).get("val") or summary.get("val")
  if val is not None and summary.get("lead", True):  # by process 0 alone
    built = models.for_data(config.model,
                            implicit_data=bool(config.data.implicit.enabled))
    # The scale, as eval gives it (a 0.5-5 run was told to try 0/1 tips).
    for line in verdicts.training_warnings(
        val, summary.get("curve"), model_config=built,
        rating_range=summary.get("rating_range")):
      log.warning("%s", line)
    if not int(val.get("tasks") or 0):
      log.warning("%s", verdicts.NO_VALIDATION)
  # An early stop's last step is not its result: the best validated is.
  best = (summary.get("best") or {}).get("step")
  chosen = ("" if best is None or best == summary["step"] else
            f" (its best validated checkpoint, which eval and export use:"
            f" step {best})")
  log.info("trained to step %d%s in %s. Next: `metarec eval --workdir=%s`"
           " (the cold-start scenarios against the baselines), `metarec plot"
           " --workdir=%s`, `tensorboard --logdir=%s`", summary["step"],
           chosen, workdir, shlex.quote(workdir), shlex.quote(workdir),
           shlex.quote(os.path.join(workdir, "tensorboard")))
  return 0


def _run_eval(inv: Invocation) -> int:
  workdir = require_flag(inv.flags, "workdir")
  config = config_io.apply_overrides(config_io.read_workdir_config(workdir),
                                     inv.overrides)
  check_config(config, saved_in=workdir)
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
  workdir, ratings, out = (require_flag(fv, n)
                            for n in ("workdir", "ratings", "out"))
  config = config_io.apply_overrides(config_io.read_workdir_config(workdir),
                                     inv.overrides)
  check_config(config, saved_in=workdir)
  setup_runtime(config)
  from metarec_jax import export  # pylint: disable=g-import-not-at-top
  summary = export.export_workdir(
      workdir, ratings, out, top_k=fv["top_k"].value, dtype=fv["dtype"].value,
      step=fv["step"].value, chunk_users=fv["chunk_users"].value,
      unknown_users=fv["unknown_users"].value, overrides=inv.overrides)
  print(export_line(summary))
  print_json(summary)
  return 0


def export_line(summary: dict) -> str:
  """`metarec export`'s summary line (its JSON follows)."""
  repeated = summary.get("duplicate_ratings") or 0
  return (f"exported {summary['users']:,} users to {summary['out']} in"
          f" {summary['seconds']:.1f} s ({summary['dtype']},"
          f" {summary['bytes_per_user'] or 0:,.0f} bytes per user);"
          f" {summary['flagged_users']:,} flagged, {summary['skipped_users']:,}"
          f" users and {summary['skipped_items']:,} ratings of unknown items"
          " skipped" + (f", {repeated:,} repeated (user, item) ratings dropped"
                        " (the latest of each kept)" if repeated else ""))


def _run_serve(inv: Invocation) -> int:
  # JAX is imported by serve() once it holds the log's lock.
  from metarec_jax import serve  # pylint: disable=g-import-not-at-top
  fv = inv.flags
  names = [f.name for f in dataclasses.fields(serve.Options)]
  return serve.serve(serve.Options(
      export=require_flag(fv, "export"),
      **{n: fv[n].value for n in names if n != "export"}))


def _run_data(inv: Invocation) -> int:
  from metarec_jax.data.convert import command  # pylint: disable=g-import-not-at-top
  print_json(command.run(inv.args, inv.flags, inv.config_file, inv.overrides))
  return 0


def _run_plot(inv: Invocation) -> int:
  workdir = require_flag(inv.flags, "workdir")
  from metarec_jax import plot  # pylint: disable=g-import-not-at-top
  paths = plot.plot_workdir(workdir)
  for path in paths:
    print(path)
  print_json({"plots": paths})
  return 0


_RUNNERS = {"train": _run_train, "eval": _run_eval, "export": _run_export,
            "data": _run_data, "serve": _run_serve, "bench": _run_bench,
            "plot": _run_plot}
# `cli_spec.COMMANDS`, each with its runner.
COMMANDS: dict[str, Command] = {
    name: dataclasses.replace(spec, run=_RUNNERS[name])
    for name, spec in cli_spec.COMMANDS.items()}


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
  """`metarec --help`: the commands and what each does."""
  lines = ["usage: metarec COMMAND [--flag=value ...]", "",
           "Meta-trains personalised recommenders (MAML family) with JAX.",
           "", "commands:"]
  lines += [f"  {name:<8} {cmd.summary}" for name, cmd in COMMANDS.items()]
  lines += ["", "`metarec COMMAND --help` describes a command's flags."]
  return "\n".join(lines)


def _command_help(name: str, cmd: Command, fv: flags.FlagValues) -> str:
  words = " ACTION" if cmd.positional else ""
  text = [f"usage: metarec {name}{words} [--flag=value ...]", "",
          cmd.description,
          "", "flags:"]
  if cmd.takes_config and cmd.config_file:
    text.append("  --config: config file `path.py[:arg]` defining"
                " get_config().")
  if cmd.takes_config:
    text.append("  --config.KEY=VALUE: override one config key (e.g."
                f" --config.{cmd.example_override}).")
  for module_flags in fv.flags_by_module_dict().values():
    for flag in module_flags:
      text.append(f"  --{flag.name}: {flag.help}{cli_spec.default_note(flag)}")
  return "\n".join(text)


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
  """Runs the command line `argv`; returns the exit status (`entry` is the
  console script)."""
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
    config_file, overrides, rest = cli_spec.split_config_args(args, cmd)
    if (config_file or overrides) and not cmd.takes_config:
      raise InputError(f"{prog} takes no --config flags")
    if config_file and not cmd.config_file:  # before its FILE is "unexpected"
      raise InputError(f"{name} reads the work directory's config; use"
                       " --config.KEY=VALUE to override keys", path="--config")
    try:
      leftover = fv([prog] + rest)
    except (flags.Error, ValueError) as e:  # --noBOOL=x: a ValueError
      raise InputError(cli_spec.flag_problem(e, fv)) from None
    cli_spec.expand_path_flags(fv)
    positional = []
    if cmd.positional:
      leftover, positional = leftover[:1], leftover[1:]
    if len(leftover) > 1:
      raise InputError(f"unexpected argument {leftover[1]!r} (flags are"
                       " --name=value)")
    configure_logging()
    with interrupts.stop_on_signals(prog):
      return cmd.run(Invocation(fv, config_file, overrides, positional))
  except BrokenPipeError:  # stdout's reader went away, or a bug (`entry`)
    raise
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130
  except interrupts.Terminated as e:  # what it was writing is removed
    print(f"{prog}: terminated ({e})", file=sys.stderr)
    return 128 + int(e.signum)
  except Exception as e:  # pylint: disable=broad-except
    said = error_line(e, name)
    if said is None:  # a bug: its traceback is the report
      raise
    if errors.out_of_memory(e):
      interrupts.end_at_once()
    print(f"{prog}: error: {said[0]}", file=sys.stderr)
    return said[1]


def entry() -> None:
  """The `metarec` program: `main`'s status as the exit status
  (`interrupts.end_program` says how a stop by a signal ends,
  `interrupts.status_of` one by a closed stdout)."""
  interrupts.end_program(interrupts.status_of(main))


if __name__ == "__main__":
  entry()
