"""Time and peak memory of reading a large ratings file.

Writes a shop-shaped CSV (string user and item ids, ratings 1-5, Unix
timestamps, a header) of `--rows` rows to a temporary folder, then parses
it in a fresh process as `metarec data prepare` does
(`ratings_io.parse_ratings`) and prints one JSON line: rows, file bytes,
seconds and the parsing process's peak resident memory.

    python tools/bench_parse.py --rows=2000000
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PARSE = """
import json, resource, sys, time
from metarec_jax.data.convert import ratings_io
fmt = ratings_io.RatingsFormat(
    delimiter=",", rating_min=1, rating_max=5, header=True, user="user",
    item="item", rating="rating", timestamp="timestamp",
    user_id_type="str", item_id_type="str")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
r = ratings_io.parse_ratings(sys.argv[1], fmt)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": len(r.users), "seconds": round(seconds, 3),
                  "peak_rss_mb": round(peak / 1024, 1),
                  "rss_before_mb": round(before / 1024, 1)}))
"""


def write_file(path: str, rows: int, seed: int = 0) -> None:
  """A CSV of `rows` ratings of 100k users and 50k items."""
  r = np.random.default_rng(seed)
  with open(path, "w") as f:
    f.write("user,item,rating,timestamp\n")
    for lo in range(0, rows, 1_000_000):
      n = min(1_000_000, rows - lo)
      users = r.integers(0, 100_000, n)
      items = r.integers(0, 50_000, n)
      ratings = r.integers(1, 6, n)
      times = r.integers(900_000_000, 1_600_000_000, n)
      f.write("".join(f"u{a},sku-{b},{c},{d}\n"
                      for a, b, c, d in zip(users, items, ratings, times)))


def main(argv):
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  if toolkit.help_asked(argv, __doc__):
    return 0
  rows = 2_000_000
  for arg in argv:
    if not arg.startswith("--rows="):
      raise InputError(f"unknown argument {arg!r}; usage: bench_parse.py"
                       " [--rows=N]")
    text = arg.split("=", 1)[1]
    if not text.isdigit() or int(text) < 1:
      raise InputError(f"--rows={text}: a positive integer")
    rows = int(text)
  with tempfile.TemporaryDirectory(prefix="metarec-parse-") as tmp:
    path = os.path.join(tmp, "ratings.csv")
    write_file(path, rows)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _PARSE, path], env=env,
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["file_bytes"] = os.path.getsize(path)
  print(json.dumps(result))


if __name__ == "__main__":
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  toolkit.run(lambda: main(sys.argv[1:]))
