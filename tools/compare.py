"""Train and evaluate several runs; write one comparison table.

Each run is a name, a config file and `KEY=VALUE` overrides. Runs come from
`--run` flags and/or a spec file; every run is trained with
`metarec_jax.train.train_and_evaluate` in `OUT/runs/NAME[/seed-S]` and
evaluated with `metarec_jax.eval.evaluate_workdir` (the cold-start
protocol). The tool writes:

  OUT/table.md      one row per run (MAE and nDCG@3 of W, UC, IC, UIC and the
                    wall-clock training minutes; on implicit feedback the
                    full-catalog nDCG@10 and HR@10), the model-free
                    baselines (implicit: popularity, random) as their own
                    rows, and the seeds
  OUT/results.json  the raw eval reports, training summaries and times

Usage (from the repository root):

    python tools/compare.py --out=runs/cmp \\
        --run="maml configs/tiny.py" \\
        --run="fomaml configs/tiny.py meta.algorithm=fomaml" \\
        [--config.KEY=VALUE ...]    # applied to every run, before its own
    python tools/compare.py --out=runs/algorithms \\
        --spec=configs/algorithms.py:melu_ml1m --seeds=0,1,2

`--run` is `"NAME CONFIG[:ARG] [KEY=VALUE ...]"` (shell-quoted words; a
`--config.` prefix on the overrides is accepted). A spec file is JSON
(`{"runs": [{"name": .., "config": .., "overrides": {"KEY": "VALUE"}}],
"overrides": {..}, "seeds": [..]}`) or Python defining `get_runs([ARG])`
that returns the same (or just the list of runs). `--seeds=0,1,2` trains
every run once per `train.seed` and reports mean +- standard deviation;
without it each run uses its config's seed. A finished (run, seed) whose
`result.json` matches the resolved config is reused, so an interrupted
comparison resumes where it stopped (`--force` deletes a run's work
directory and retrains it; a work directory trained with another config is
an error). Training time is
the wall clock of `train_and_evaluate`: store building (first use),
compilation, training, validation and checkpoints. All runs share one
process and therefore one device setup (taken from the first run's
`train.cpu_devices` on CPU). To share one prepared task store between runs,
pass `--config.data.store=PATH`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
from typing import Any, Sequence

from absl import flags

from metarec_jax import atomic, cli, config_io
from metarec_jax.errors import InputError

log = logging.getLogger("metarec")

SCENARIOS = ("W", "UC", "IC", "UIC")
METRICS = (("mae", "MAE"), ("ndcg@3", "nDCG@3"))
BASELINES = ("global_mean", "item_mean_user_bias")
# Implicit feedback's reports have no rating metrics (null): the table
# shows their full-catalog ranking and its baselines instead.
RANKING_METRICS = (("ndcg@10", "nDCG@10"), ("hr@10", "HR@10"))
RANKING_BASELINES = ("popularity", "random")
RESULT = "result.json"


@dataclasses.dataclass
class Run:
  """One row of the table: a config file and its overrides."""

  name: str
  config: str
  overrides: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _override(text: str, where: str) -> tuple[str, str]:
  text = text[len("--config."):] if text.startswith("--config.") else text
  key, eq, value = text.partition("=")
  if not eq or not key:
    raise InputError(f"expected KEY=VALUE, got {text!r}", path=where)
  return key, value


def parse_run(text: str) -> Run:
  """`"NAME CONFIG [KEY=VALUE ...]"` -> Run."""
  words = shlex.split(text)
  if len(words) < 2:
    raise InputError(f"expected \"NAME CONFIG [KEY=VALUE ...]\", got {text!r}",
                     path="--run")
  return Run(words[0], words[1], [_override(w, "--run") for w in words[2:]])


def _overrides_of(value: Any, where: str) -> list[tuple[str, str]]:
  if isinstance(value, dict):
    return [(str(k), v if isinstance(v, str) else json.dumps(v))
            for k, v in value.items()]
  if isinstance(value, (list, tuple)):
    return [_override(str(v), where) for v in value]
  raise InputError("overrides must be a {KEY: VALUE} object or a list of"
                   " KEY=VALUE strings", path=where)


def load_spec(spec: str) -> tuple[list[Run], list[tuple[str, str]],
                                  list[int] | None]:
  """Runs, common overrides and seeds of a JSON or Python spec file."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise InputError("no such spec file", path=path)
  if path.endswith(".py"):
    data = config_io.call_python_file(path, "get_runs", arg)
  else:
    try:
      with open(path) as f:
        data = json.load(f)
    except json.JSONDecodeError as e:
      raise InputError(f"invalid JSON: {e.msg}", path=path,
                       line=e.lineno) from e
  if isinstance(data, (list, tuple)):
    data = {"runs": list(data)}
  if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
    raise InputError("a spec needs a list of runs", path=path)
  runs = []
  for i, r in enumerate(data["runs"]):
    where = f"{path}: runs[{i}]"
    if not isinstance(r, dict) or "name" not in r or "config" not in r:
      raise InputError("a run needs a name and a config", path=where)
    runs.append(Run(str(r["name"]), str(r["config"]),
                    _overrides_of(r.get("overrides", {}), where)))
  common = _overrides_of(data.get("overrides", {}), path)
  seeds = data.get("seeds")
  if seeds is not None:
    # A bool is an int to Python, and int("x") or int(3.5) is no seed.
    if not isinstance(seeds, (list, tuple)) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in seeds):
      raise InputError(f"seeds must be a list of integers, not {seeds!r}",
                       path=path)
    seeds = [int(s) for s in seeds]
  return runs, common, seeds


def resolve(run: Run, common: Sequence[tuple[str, str]], seed: int | None):
  """The run's config: file, common overrides, own overrides, seed."""
  config = config_io.load_config_file(run.config)
  config_io.apply_overrides(config, list(common) + list(run.overrides))
  if seed is not None:
    config.train.seed = int(seed)
  try:  # every key's type and range too (a bad value of the last run
    cli.check_config(config)  # surfaced after the first ones trained)
  except InputError as e:
    raise InputError(f"run {run.name!r}: {e.message}") from None
  return config


def run_one(run: Run, config, workdir: str, *, force: bool) -> dict:
  """Trains and evaluates one (run, seed), or reuses its finished result."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax import eval as eval_lib
  from metarec_jax.train import train_and_evaluate
  record = _json_safe(config_io.to_dict(config))
  path = os.path.join(workdir, RESULT)
  if force and os.path.isdir(workdir):
    log.info("%s: --force: removing %s", run.name, workdir)
    shutil.rmtree(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError("is a file, not a run's work directory", path=workdir)
  if os.path.exists(path):
    previous = _read_record(path, "a result", "delete it to evaluate the"
                            " run again")
    if previous.get("config") == record:
      _check_result(previous, path)
      log.info("%s: reusing %s", run.name, path)
      return previous
  previous_config = _workdir_config(workdir)
  if previous_config is not None and not _same_run(previous_config, record):
    raise InputError(f"holds a run of another config than run {run.name!r};"
                     " pass --force to retrain it, or use another --out",
                     path=workdir)
  # Same config, no result: an interrupted run, which training resumes.
  resumed = previous_config is not None
  os.makedirs(workdir, exist_ok=True)
  log.info("%s: training in %s", run.name, workdir)
  t0 = time.perf_counter()
  summary = train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - t0
  log.info("%s: trained in %.1f min; evaluating", run.name, seconds / 60)
  report = eval_lib.evaluate_workdir(workdir)
  result = {"name": run.name, "config_file": run.config,
            "overrides": [f"{k}={v}" for k, v in run.overrides],
            "seed": int(config.train.seed), "workdir": workdir,
            "train_seconds": seconds, "resumed": resumed,
            "train_summary": summary, "eval": report, "config": record}
  atomic.write_text(path, json.dumps(_json_safe(result), indent=1)
                              + "\n")
  return result


# Keys a run resolves from the data or the run when they are 0 and writes
# resolved into its config.json (`train_and_evaluate`).
RESOLVED = ("train.schedule_steps", "eval.val_fraction")


def _same_run(saved: dict, record: dict) -> bool:
  """Whether a work directory's config is `record` once resolved."""
  saved, record = config_io.flat(saved), config_io.flat(record)
  for key in RESOLVED:
    if not record.get(key) and key in saved:
      record[key] = saved[key]
  return saved == record


def _workdir_config(workdir: str) -> dict | None:
  """The config a work directory was trained with (None: never trained)."""
  path = os.path.join(workdir, config_io.WORKDIR_CONFIG)
  if not os.path.exists(path):
    return None
  hint = "pass --force to retrain the run, or use another --out"
  config = _read_record(path, "a work directory's config", hint).get("config")
  if config is not None and not isinstance(config, dict):
    raise InputError(f"its config is a JSON {type(config).__name__}, not an"
                     f" object; {hint}", path=path)
  return config


def _check_result(result: dict, path: str) -> None:
  """Raises InputError where a reused `result.json` lacks what the table
  reads (an eval report, the training time): edited by hand."""
  report = result.get("eval")
  if not (isinstance(report, dict) and isinstance(report.get("scenarios"),
                                                  dict)
          and isinstance(result.get("train_seconds"), (int, float))):
    raise InputError("not a result: no eval report with scenarios or no"
                     " train_seconds; delete it to evaluate the run again",
                     path=path)


def _read_record(path: str, what: str, hint: str) -> dict:
  """The JSON object in `path`; a run's file damaged by hand or by a disk
  is one line naming it and `hint` (exit 2), not a traceback."""
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
  except (ValueError, OSError) as e:  # JSONDecodeError, UnicodeDecodeError
    raise InputError(f"cannot read {what} ({e}); {hint}",
                     path=path) from None
  if not isinstance(record, dict):
    raise InputError(f"not {what}: a JSON {type(record).__name__}, not an"
                     f" object; {hint}", path=path)
  return record


def _json_safe(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if hasattr(value, "item") and not isinstance(value, (str, bytes)):
    return _json_safe(value.item())  # numpy scalars
  return value


def _metric(report: dict, scenario: str, key: str,
            baseline: str | None = None) -> float | None:
  m = report["scenarios"].get(scenario)
  if m is None:
    return None
  if "ranking" in m:  # implicit feedback: the full-catalog ranking
    m = m["ranking"]
    if baseline is not None:
      m = m["baselines"].get(baseline, {})
    return (m.get("full") or {}).get(key)
  if baseline is not None:
    m = m["baselines"].get(baseline, {})
  return m.get(key)


def _implicit(results: dict[str, list[dict]]) -> bool:
  """Whether the runs' reports are of implicit feedback (ranking only)."""
  return any("ranking" in m for rs in results.values() for r in rs
             for m in r["eval"]["scenarios"].values())


def _cell(values: list[float | None], digits: int = 4) -> str:
  """Mean (+- sample std over seeds); `-` where a value does not exist."""
  vals = [v for v in values if v is not None]
  if not vals or len(vals) < len(values):
    return "-"
  mean = sum(vals) / len(vals)
  if len(vals) == 1:
    return f"{mean:.{digits}f}"
  std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _baseline_key(result: dict) -> str:
  """What the baselines depend on: the data and the evaluation protocol."""
  c = result["config"]
  return json.dumps({"data": c["data"], "eval": c["eval"]}, sort_keys=True)


def make_table(results: dict[str, list[dict]]) -> str:
  """The markdown table of `{run name: [result per seed]}`."""
  metrics, baselines = ((RANKING_METRICS, RANKING_BASELINES)
                        if _implicit(results) else (METRICS, BASELINES))
  header = ["run"] + [f"{s} {label}" for s in SCENARIOS
                      for _, label in metrics] + ["train min"]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  for name, per_seed in results.items():
    cells = [_cell([_metric(r["eval"], s, k) for r in per_seed])
             for s in SCENARIOS for k, _ in metrics]
    minutes = _cell([r["train_seconds"] / 60 for r in per_seed], 2)
    lines.append("| " + " | ".join([name] + cells + [minutes]) + " |")
  # The baselines do not depend on training: one pair of rows per distinct
  # data/protocol (one pair when every run evaluates on the same tasks).
  groups: dict[str, list[str]] = {}
  for name, per_seed in results.items():
    groups.setdefault(_baseline_key(per_seed[0]), []).append(name)
  for names in groups.values():
    report = results[names[0]][0]["eval"]
    suffix = "" if len(groups) == 1 else f" ({', '.join(names)})"
    for baseline in baselines:
      cells = [_cell([_metric(report, s, k, baseline)])
               for s in SCENARIOS for k, _ in metrics]
      lines.append("| " + " | ".join([f"{baseline}{suffix}"] + cells + ["-"])
                   + " |")
  lines.append("")
  lines.append(seeds_note(results))
  return "\n".join(lines) + "\n"


def seeds_note(results: dict[str, list[dict]]) -> str:
  """One line naming every seed the numbers depend on."""
  train = sorted({r["seed"] for rs in results.values() for r in rs})
  data = sorted({r["config"]["data"].get("synthetic", {}).get("seed")
                 for rs in results.values() for r in rs
                 if r["config"]["data"]["name"] == "synthetic"})
  evals = sorted({r["config"]["eval"]["seed"]
                  for rs in results.values() for r in rs})
  steps = sorted({r["eval"]["step"] for rs in results.values() for r in rs})
  per_run = max(len(rs) for rs in results.values())
  parts = [f"train.seed {', '.join(map(str, train))}"
           + (f" (mean ± std over {per_run} seeds)" if per_run > 1 else ""),
           f"eval.seed {', '.join(map(str, evals))}"]
  if data:
    parts.append(f"data.synthetic.seed {', '.join(map(str, data))}")
  what = ("full-catalog nDCG@10 and HR@10 of the held-out positives"
          if _implicit(results) else "MAE and nDCG@3 of the query ratings")
  return (f"Seeds: {'; '.join(parts)}. Evaluated at step"
          f" {', '.join(map(str, steps))}; {what} after adaptation; train"
          " min is wall-clock training time.")


def compare(runs: Sequence[Run], out: str, *,
            common: Sequence[tuple[str, str]] = (),
            seeds: Sequence[int] | None = None,
            force: bool = False) -> dict:
  """Trains and evaluates `runs`; writes `out/table.md`, `out/results.json`.

  Returns:
    `{"table": markdown, "runs": {name: [result per seed]}, "seeds": ...}`.
  """
  names = [r.name for r in runs]
  if not runs:
    raise InputError("no runs: give --run or --spec")
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise InputError(f"duplicate run name(s): {', '.join(dupes)}")
  for name in names:
    if not name or os.sep in name or name.startswith("."):
      raise InputError(f"run name {name!r} cannot name a folder")
  if seeds and len(set(seeds)) < len(seeds):  # one run, "over 2 seeds"
    raise InputError(f"seeds {list(seeds)} repeat a seed: name each once")
  # Every config is resolved before anything trains: a typo in the last run
  # must not surface hours into the comparison.
  plan = [(run, seed, resolve(run, common, seed))
          for run in runs for seed in (seeds or [None])]
  # The CLI's device split and persistent compilation cache, so a run's
  # train time is what `metarec train` would take.
  cli.setup_runtime(plan[0][2])
  for folder in (out, os.path.join(out, "runs")):
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise InputError("is a file, not a folder", path=folder)
  os.makedirs(out, exist_ok=True)
  results: dict[str, list[dict]] = {n: [] for n in names}
  for run, seed, config in plan:
    workdir = os.path.join(os.path.abspath(out), "runs", run.name)
    if seeds:
      workdir = os.path.join(workdir, f"seed-{seed}")
    results[run.name].append(run_one(run, config, workdir, force=force))
  table = make_table(results)
  record = {"seeds": list(seeds) if seeds else None, "runs": results,
            "table": table}
  atomic.write_text(os.path.join(out, "results.json"),
                              json.dumps(_json_safe(record), indent=1) + "\n")
  atomic.write_text(os.path.join(out, "table.md"), table)
  return record


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("out", None, "Output folder: table.md, results.json"
                      " and runs/NAME work directories.", flag_values=fv)
  flags.DEFINE_multi_string("run", [], "A run: \"NAME CONFIG[:ARG]"
                            " [KEY=VALUE ...]\" (repeatable).", flag_values=fv)
  flags.DEFINE_string("spec", None, "A JSON spec or a Python file with"
                      " get_runs([ARG]): FILE[:ARG].", flag_values=fv)
  flags.DEFINE_list("seeds", [], "Train every run once per train.seed in"
                    " this list (default: each config's own seed).",
                    flag_values=fv)
  flags.DEFINE_list("only", [], "Run only these names of the spec.",
                    flag_values=fv)
  flags.DEFINE_bool("force", False, "Retrain runs that already have a"
                    " result.", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the exit status."""
  args = list(sys.argv[1:] if argv is None else argv)
  prog = "compare.py"
  try:
    common, rest = [], []
    for arg in args:
      if arg.startswith("--config."):
        common.append(_override(arg, arg))
      else:
        rest.append(arg)
    if "--help" in rest or "-h" in rest:
      print(__doc__)
      return 0
    fv = flags.FlagValues()
    _define_flags(fv)
    try:
      leftover = fv([prog] + rest)
    except flags.Error as e:
      raise InputError(str(e).splitlines()[0]) from None
    if len(leftover) > 1:
      raise InputError(f"unexpected argument {leftover[1]!r}")
    if not fv.out:
      raise InputError("--out is required")
    runs, seeds = [], None
    if fv.spec:
      runs, spec_common, seeds = load_spec(fv.spec)
      common = spec_common + common
    runs += [parse_run(r) for r in fv.run]
    if fv.only:
      unknown = sorted(set(fv.only) - {r.name for r in runs})
      if unknown:
        raise InputError(f"--only names unknown run(s): {', '.join(unknown)}")
      runs = [r for r in runs if r.name in fv.only]
    if fv.seeds:
      try:
        seeds = [int(s) for s in fv.seeds]
      except ValueError:
        raise InputError(f"expected integers, got {fv.seeds}",
                         path="--seeds") from None
    cli.configure_logging()
    record = compare(runs, fv.out, common=common, seeds=seeds,
                     force=fv.force)
  except InputError as e:
    print(f"{prog}: error: {e.message}", file=sys.stderr)
    return 2
  print(record["table"], end="")
  print(json.dumps({"table": os.path.join(fv.out, "table.md"),
                    "results": os.path.join(fv.out, "results.json")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
