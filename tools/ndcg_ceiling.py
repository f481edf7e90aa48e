"""How high can nDCG@k go at a given MAE? The truth plus noise, measured.

Takes the query sets `metarec eval --write_tasks=DIR` wrote and scores
"predictions" that are each true rating plus independent Gaussian noise,
scaled so that their MAE is a target, with the protocol's nDCG (the very
function `metarec eval` uses: gain 2^rating - 1, ties by item id). It shows
which nDCG a model with that MAE can be expected to reach when its errors
are unstructured, which is how we judged MeLU's published nDCG@3 (see the
README's MovieLens-1M results).

Usage (from the repository root):

    metarec eval --workdir=runs/ml1m-0 --write_tasks=runs/ml1m-0/tasks
    python tools/ndcg_ceiling.py --workdir=runs/ml1m-0 \\
        --tasks=runs/ml1m-0/tasks --mae=0.57,0.72 [--scenario=W --k=3]

Prints one JSON line per target MAE: the MAE reached, nDCG@1 and nDCG@k,
averaged over `--repeats` noise draws.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from metarec_jax import config_io
from metarec_jax.data import ratings_io
from metarec_jax.data import store as store_lib
from metarec_jax.eval import metrics


def query_arrays(path: str, store) -> tuple[np.ndarray, np.ndarray,
                                            np.ndarray]:
  """`[users, width]` true ratings, item ids and mask of a query file.

  A written query file holds each task's rows together, one task per user
  within a scenario.
  """
  users, items, ratings, _ = ratings_io.read_ratings(path, store)
  order = np.argsort(users, kind="stable")
  users, items, ratings = users[order], items[order], ratings[order]
  _, starts, counts = np.unique(users, return_index=True, return_counts=True)
  width = int(counts.max())
  true = np.zeros((len(starts), width))
  ids = np.zeros((len(starts), width), np.int64)
  mask = np.zeros((len(starts), width), bool)
  col = np.arange(len(users)) - np.repeat(starts, counts)
  row = np.repeat(np.arange(len(starts)), counts)
  true[row, col] = ratings
  ids[row, col] = ratings_io.lookup(store.item_ids, items)
  mask[row, col] = True
  return true, ids, mask


def noisy_scores(true, ids, mask, *, target_mae: float, k: int,
                 repeats: int, seed: int) -> dict:
  """nDCG of truth + N(0, s^2), s chosen so the MAE is `target_mae`."""
  # E|N(0, s^2)| = s * sqrt(2 / pi).
  sigma = target_mae / np.sqrt(2 / np.pi)
  rng = np.random.default_rng(seed)
  out = {"mae": [], "ndcg@1": [], f"ndcg@{k}": []}
  for _ in range(repeats):
    pred = true + sigma * rng.standard_normal(true.shape)
    out["mae"].append(metrics.mae(pred, true, mask))
    out["ndcg@1"].append(metrics.ndcg(pred, true, mask, ids, 1))
    out[f"ndcg@{k}"].append(metrics.ndcg(pred, true, mask, ids, k))
  return {"target_mae": target_mae, "tasks": int(mask.any(-1).sum()),
          **{key: float(np.mean(v)) for key, v in out.items()}}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True,
                      help="the run whose store the tasks came from")
  parser.add_argument("--tasks", required=True,
                      help="a folder written by metarec eval --write_tasks")
  parser.add_argument("--scenario", default="W")
  parser.add_argument("--mae", default="0.57,0.72",
                      help="comma-separated target MAEs")
  parser.add_argument("--k", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  config = config_io.read_workdir_config(args.workdir)
  store = store_lib.open_store(config.data.store or
                               os.path.join(args.workdir, "store"))
  ext = ratings_io.store_format(store).extension
  path = os.path.join(args.tasks, args.scenario, f"query.{ext}")
  true, ids, mask = query_arrays(path, store)
  for target in (float(v) for v in args.mae.split(",")):
    print(json.dumps({"scenario": args.scenario, **noisy_scores(
        true, ids, mask, target_mae=target, k=args.k, repeats=args.repeats,
        seed=args.seed)}))


if __name__ == "__main__":
  main()
