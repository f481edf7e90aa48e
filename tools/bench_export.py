"""Benchmark `metarec export` on synthetic users.

Builds (or reuses) a synthetic task store of `--users` users inside a work
directory, meta-trains a tiny-ish MeLU on it for a few steps (or uses
`--workdir`), writes every user's ratings as a ratings file in the
dataset's input format, and runs `metarec export` on it as a real process,
once per `--dtypes` entry. Prints each export's human summary and, as the
last line of stdout, one JSON object:

    {"users": .., "ratings": .., "ratings_file_mb": .., "workdir": ..,
     "float32": {<export summary>, "wall_seconds": ..},
     "bfloat16": {...}}

where the export summary holds `seconds` (inside the command: reading,
compiling, adapting, writing), `bytes_per_user`, `adapted_bytes_per_user`,
`peak_rss_mb` and the rest of `metarec export`'s JSON, and `wall_seconds`
the whole process (Python and JAX start-up included).

Usage (from the repository root):

    python tools/bench_export.py --dir=/tmp/bench-export              # 100,000 users
    python tools/bench_export.py --dir=/tmp/bench-export --users=2000 # a quick check
    python tools/bench_export.py --dir=D --workdir=RUN --ratings=FILE  # your own run

Everything is written under `--dir` (work directory, ratings file, exports);
a second run with the same `--dir` and sizes reuses the trained work
directory and the ratings file. The default model is MeLU as published
(embeddings of width 32, decision MLP 256-64-64-1, only the MLP adapted):
20,673 adapted parameters, 82.7 kB per user in float32, so 100,000 users
write 8.3 GB (half in bfloat16). The per-user arrays are filled through
memory maps whose pages are handed back as they are written, so the peak
RSS stays near that of a small export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Sequence

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from metarec_jax.errors import InputError  # noqa: E402  pylint: disable=g-import-not-at-top


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("dir", None, "Scratch folder for the work directory,"
                      " the ratings file and the exports.", flag_values=fv)
  flags.DEFINE_integer("users", 100_000, "Synthetic users (all exported).",
                       flag_values=fv)
  flags.DEFINE_integer("items", 2000, "Synthetic items.", flag_values=fv)
  flags.DEFINE_integer("min_ratings", 10, "Fewest ratings per user.",
                       flag_values=fv)
  flags.DEFINE_integer("max_ratings", 50, "Most ratings per user.",
                       flag_values=fv)
  flags.DEFINE_integer("embed_dim", 32, "MeLU embedding width.",
                       flag_values=fv)
  flags.DEFINE_list("hidden", ["64", "64"], "MeLU decision MLP widths.",
                    flag_values=fv)
  flags.DEFINE_integer("train_steps", 5, "Meta-steps to train.",
                       flag_values=fv)
  flags.DEFINE_string("workdir", None, "Use this trained work directory"
                      " instead of training one (needs --ratings).",
                      flag_values=fv)
  flags.DEFINE_string("ratings", None, "Use this ratings file (with"
                      " --workdir).", flag_values=fv)
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Export dtypes to run.",
                    flag_values=fv)
  flags.DEFINE_integer("top_k", 0, "Also write top-K recommendations.",
                       flag_values=fv)
  flags.DEFINE_integer("chunk_users", 256, "metarec export --chunk_users.",
                       flag_values=fv)


def _metarec(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  out = subprocess.run([sys.executable, "-m", "metarec_jax.cli", *args],
                       capture_output=True, text=True, env=env)
  if out.returncode != 0:
    sys.stderr.write(out.stderr)
    raise InputError(f"metarec {args[0]} failed with status"
                     f" {out.returncode}")
  return out


def train(fv, workdir: str) -> None:
  """A few meta-steps of a tiny-ish MeLU on `--users` synthetic users."""
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    print(f"reusing the trained work directory {workdir}", file=sys.stderr)
    return
  hidden = "(" + ",".join(str(int(h)) for h in fv.hidden) + ",)"
  overrides = {
      "data.synthetic.num_users": fv.users, "data.synthetic.num_items":
      fv.items, "data.synthetic.min_ratings": fv.min_ratings,
      "data.synthetic.max_ratings": fv.max_ratings,
      "model.embed_dim": fv.embed_dim, "model.hidden": hidden,
      "train.num_steps": fv.train_steps, "train.warmup_steps": 1,
      "train.eval_every_steps": fv.train_steps,
      "checkpoint.every_steps": fv.train_steps,
      "log.every_steps": fv.train_steps, "log.histogram_every_steps": 0,
      "eval.max_tasks": 32,
  }
  t0 = time.perf_counter()
  _metarec("train", f"--config={os.path.join(ROOT, 'configs', 'default.py')}",
           f"--workdir={workdir}",
           *(f"--config.{k}={v}" for k, v in overrides.items()))
  print(f"trained {workdir} in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr)


def write_ratings_file(workdir: str, path: str) -> int:
  """Every store user's ratings as a ratings file; returns the row count."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from metarec_jax.data import store as store_lib  # pylint: disable=g-import-not-at-top
  from metarec_jax.data.convert import ratings_io  # pylint: disable=g-import-not-at-top
  store = store_lib.open_store(os.path.join(workdir, "store"))
  if os.path.exists(path):
    return store.num_ratings
  users = np.repeat(np.asarray(store.user_ids), store.counts())
  items = np.asarray(store.item_ids)[np.asarray(store.items)]
  ratings_io.write_ratings(path, users, items, np.asarray(store.ratings),
                           store)
  return store.num_ratings


def trained_paths(fv) -> tuple[str, str]:
  """The work directory and ratings file of `fv`'s sizes under `--dir`:
  named by every size, so that a run with other sizes trains anew (keyed
  on `--users` alone, it reported the figures of the earlier model)."""
  hidden = "-".join(str(int(h)) for h in fv.hidden)
  sizes = (f"{fv.users}u-{fv.items}i-{fv.min_ratings}to{fv.max_ratings}r")
  model = f"{sizes}-e{fv.embed_dim}-h{hidden}-s{fv.train_steps}"
  return (os.path.join(fv.dir, f"work-{model}"),
          os.path.join(fv.dir, f"ratings-{model}.csv"))


def bench(fv) -> dict:
  os.makedirs(fv.dir, exist_ok=True)
  if fv.workdir:
    if not fv.ratings:
      raise InputError("--workdir needs --ratings")
    workdir, ratings = fv.workdir, fv.ratings
    with open(ratings, "rb") as f:
      num_ratings = sum(1 for _ in f)
  else:
    workdir, ratings = trained_paths(fv)
    train(fv, workdir)
    num_ratings = write_ratings_file(workdir, ratings)
  report = {"users": None, "ratings": num_ratings,
            "ratings_file_mb": round(os.path.getsize(ratings) / 2**20, 1),
            "workdir": workdir}
  for dtype in fv.dtypes:
    out = os.path.join(fv.dir, f"export-{dtype}")
    t0 = time.perf_counter()
    result = _metarec("export", f"--workdir={workdir}",
                      f"--ratings={ratings}", f"--out={out}",
                      f"--dtype={dtype}", f"--top_k={fv.top_k}",
                      f"--chunk_users={fv.chunk_users}")
    wall = time.perf_counter() - t0
    lines = result.stdout.strip().splitlines()
    print("\n".join(lines[:-1]))
    summary = json.loads(lines[-1])
    summary["wall_seconds"] = round(wall, 2)
    report["users"] = summary["users"]
    report[dtype] = summary
  return report


def main(argv: Sequence[str] | None = None) -> int:
  args = list(sys.argv[1:] if argv is None else argv)
  prog = "bench_export.py"
  fv = flags.FlagValues()
  _define_flags(fv)
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  if toolkit.help_asked(args, __doc__, fv):
    return 0
  try:
    try:
      leftover = fv([prog] + args)
    except flags.Error as e:
      raise InputError(str(e).splitlines()[0]) from None
    if len(leftover) > 1:
      raise InputError(f"unexpected argument {leftover[1]!r}")
    if not fv.dir:
      raise InputError("--dir is required")
    if os.path.exists(fv.dir) and not os.path.isdir(fv.dir):
      raise InputError(f"--dir={fv.dir}: not a folder")
    # Every path from the caller's folder (`metarec` runs there too).
    for name in ("dir", "workdir", "ratings"):
      if fv[name].value:
        fv[name].value = os.path.abspath(fv[name].value)
    report = bench(fv)
  except InputError as e:
    print(f"{prog}: error: {e.message}", file=sys.stderr)
    return 2
  print(json.dumps(report))
  return 0


if __name__ == "__main__":
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  toolkit.run(main)
