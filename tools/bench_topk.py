"""Memory and time of the server's batched top k on a large catalogue.

Loads an export (`metarec export --out=DIR`), tiles its catalogue's item
feature rows to `--items` items, and ranks it for `--users` copies of its
first user with `Export`'s top k (`export.batched.top_k_users`, what
`metarec serve` runs for a batch of recommendation requests). Prints one
JSON line: the compiled program's temporary memory, the median seconds of
a call over `--rounds` calls, and the process's peak resident memory.

    python tools/bench_topk.py --export=DIR --items=1000000 --users=16

(2026-12-06, the tiny model's export, 1M items, 16 users, k=100, a quiet
2-core VM: 5,657 MB of temporaries and 2.5 s a call when the whole
catalogue was scored at once, 124 MB and 0.95 s in blocks.)
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import sys
import time


def main(argv) -> int:
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="bench_topk.py", description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--export", required=True, help="An export folder.")
  parser.add_argument("--items", type=toolkit.positive_int, default=1000000,
                      help="Items of the tiled catalogue.")
  parser.add_argument("--users", type=toolkit.positive_int, default=16,
                      help="Users ranked in one call (a server's batch).")
  parser.add_argument("--k", type=toolkit.positive_int, default=100,
                      help="Items ranked per user (a server's --max_k).")
  parser.add_argument("--rounds", type=toolkit.positive_int, default=5,
                      help="Timed calls after the first.")
  args = parser.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from metarec_jax import export  # pylint: disable=g-import-not-at-top
  from metarec_jax.export import batched  # pylint: disable=g-import-not-at-top

  e = export.load(args.export)
  n, b = args.items, args.users
  tables = {name: np.resize(np.asarray(t), (n,) + np.asarray(t).shape[1:])
            for name, t in e._item_tables.items()}  # pylint: disable=protected-access
  user = e.user(e.user_ids[0])
  fast = {p: np.stack([np.asarray(v)] * b) for p, v in user.fast.items()}
  features = {name: np.stack([np.asarray(v)] * b)
              for name, v in user.user_features.items()}
  excluded = np.zeros((b, n), bool)
  top_k = jax.jit(functools.partial(batched.top_k_users, e.model),
                  static_argnames="k")
  compiled = top_k.lower(e._params, fast, features, tables, excluded,  # pylint: disable=protected-access
                         k=args.k).compile()
  memory = compiled.memory_analysis()
  call = lambda: jax.block_until_ready(compiled(  # pylint: disable=protected-access
      e._params, fast, features, tables, excluded))
  call()
  seconds = []
  for _ in range(args.rounds):
    start = time.perf_counter()
    call()
    seconds.append(time.perf_counter() - start)
  print(json.dumps({
      "items": n, "users": b, "k": args.k,
      "temp_mb": (None if memory is None
                  else round(memory.temp_size_in_bytes / 2**20, 1)),
      "median_seconds": round(float(np.median(seconds)), 4),
      "peak_rss_mb": round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
  return 0


if __name__ == "__main__":
  from metarec_jax import toolkit  # pylint: disable=g-import-not-at-top
  toolkit.run(lambda: main(sys.argv[1:]))
