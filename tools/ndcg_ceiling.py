"""Which nDCG can a model reach on these tasks? References, measured.

Scores several predictors of the query ratings `metarec eval
--write_tasks=DIR` wrote, per scenario, with the protocol's metrics (the very
functions `metarec eval` uses: gain 2^rating - 1, tied items at their
mean gain) and with
the nDCG@k of a linear gain (the rating itself, as e.g. scikit-learn's
`ndcg_score` computes it), because published nDCG figures rarely say which
gain they used:

- `prediction`, `item_mean_user_bias`, `global_mean`: the model's and the
  baselines' predictions from `DIR/<scenario>/predictions.tsv` (ranked by
  their unclipped columns where the file has them, as `metarec eval`
  ranks);
- `mf` (`--mf`): a biased matrix factorisation fitted by alternating least
  squares to every rating of the run's store except the query ratings of
  the folder's scenarios. It is transductive: it sees each test user's
  support, every other test user's ratings, and the new items' ratings by
  other users, far more than the protocol lets a model see, so it is a
  generous reference for what collaborative filtering ranks on this data;
- `noise@M` (`--mae`): the true rating plus independent Gaussian noise
  scaled to MAE M, the most optimistic reading of an MAE (errors that do
  not depend on the rating).

Usage (from the repository root):

    metarec eval --workdir=runs/ml1m-0 --write_tasks=runs/ml1m-0/tasks
    python tools/ndcg_ceiling.py --workdir=runs/ml1m-0 \\
        --tasks=runs/ml1m-0/tasks --mf [--mae=0.70] [--k=3]

Prints one JSON line per scenario and predictor: MAE, nDCG@1 and nDCG@k
(protocol gain) and nDCG@k with the linear gain (`ndcg@k_linear`).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from metarec_jax import config_io, toolkit
from metarec_jax.data import store as store_lib
from metarec_jax.data.convert import prepare
from metarec_jax.data.splits import SCENARIOS
from metarec_jax.eval import metrics, predictions_file

PREDICTION_COLUMNS = ("prediction", "item_mean_user_bias", "global_mean")


def scores(pred, true, mask, k: int, rank_by=None) -> dict:
  """MAE, nDCG@1 and nDCG@k (protocol gain) and nDCG@k (linear gain);
  nDCG ranks by `rank_by` where given (the unclipped predictions)."""
  rank_by = pred if rank_by is None else rank_by
  return {"mae": metrics.mae(pred, true, mask),
          "ndcg@1": metrics.ndcg(rank_by, true, mask, 1),
          f"ndcg@{k}": metrics.ndcg(rank_by, true, mask, k),
          f"ndcg@{k}_linear": metrics.ndcg(rank_by, true, mask, k,
                                           gain="linear")}


def noisy_scores(true, mask, *, target_mae: float, k: int,
                 repeats: int, seed: int) -> dict:
  """Scores of truth + N(0, s^2), s chosen so the MAE is `target_mae`."""
  # E|N(0, s^2)| = s * sqrt(2 / pi).
  sigma = target_mae / np.sqrt(2 / np.pi)
  rng = np.random.default_rng(seed)
  runs = [scores(true + sigma * rng.standard_normal(true.shape), true, mask,
                 k) for _ in range(repeats)]
  return {"target_mae": target_mae, "tasks": int(mask.any(-1).sum()),
          **{key: float(np.mean([r[key] for r in runs])) for key in runs[0]}}


def _normal_equations(x: np.ndarray, y: np.ndarray, group: np.ndarray,
                      num_groups: int) -> tuple[np.ndarray, np.ndarray]:
  """Per group g: the sum of x x^T and of x y over its rows (rows sorted
  by group).

  A loop of one small matrix product per group: on ML-1M it is 10-20x
  faster than materialising the rows' outer products (numpy's reduceat or
  a segment sum in JAX), which is memory-bound.
  """
  dim = x.shape[1]
  gram = np.zeros((num_groups, dim, dim))
  rhs = np.zeros((num_groups, dim))
  bounds = np.searchsorted(group, np.arange(num_groups + 1))
  for g in np.flatnonzero(np.diff(bounds)):
    rows = x[bounds[g]:bounds[g + 1]]
    gram[g] = rows.T @ rows
    rhs[g] = rows.T @ y[bounds[g]:bounds[g + 1]]
  return gram, rhs


def fit_biased_mf(users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
                  *, num_users: int, num_items: int, dim: int = 32,
                  reg: float = 10.0, bias_reg: float = 1.0, iters: int = 12,
                  seed: int = 0):
  """Biased matrix factorisation by alternating least squares.

  r(u, i) ~ mu + b_u + b_i + p_u . q_i, each side solved exactly given the
  other (ridge `reg` on the factors, `bias_reg` on the biases).

  Returns:
    predict(users, items) -> ratings (unclipped).
  """
  mu = float(ratings.mean())
  rng = np.random.default_rng(seed)
  side = {"user": (users, num_users), "item": (items, num_items)}
  # [factors | bias] per row of each side.
  params = {name: np.concatenate([rng.normal(0, 0.1, (n, dim)),
                                  np.zeros((n, 1))], 1)
            for name, (_, n) in side.items()}
  order = {name: np.argsort(idx, kind="stable")
           for name, (idx, _) in side.items()}
  penalty = np.diag([reg] * dim + [bias_reg])

  def solve(name, other):
    idx, n = side[name]
    other_idx = side[other][0]
    o = order[name]
    theirs = params[other][other_idx[o]]
    # Against the other side's factors plus a constant 1 for our bias.
    x = np.concatenate([theirs[:, :dim], np.ones((len(o), 1))], 1)
    y = ratings[o] - mu - theirs[:, dim]
    gram, rhs = _normal_equations(x, y, idx[o], n)
    params[name] = np.linalg.solve(gram + penalty, rhs[..., None])[..., 0]

  for _ in range(iters):
    solve("user", "item")
    solve("item", "user")

  def predict(u, i):
    pu, qi = params["user"][u], params["item"][i]
    return mu + pu[:, dim] + qi[:, dim] + (pu[:, :dim] * qi[:, :dim]).sum(1)

  return predict


def store_ratings(store) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(user index, item index, rating) of every rating of a store."""
  users = np.repeat(np.arange(store.num_users), store.counts())
  return users, np.asarray(store.items, np.int64), np.asarray(
      store.ratings, np.float64)


def mf_predictions(store, queries: dict, *, dim: int, reg: float,
                   iters: int) -> dict[str, np.ndarray]:
  """`[N, Q]` predictions of the transductive MF for every scenario's
  query arrays `(user index [N], item index [N, Q], mask)`."""
  users, items, ratings = store_ratings(store)
  held = np.zeros(len(users), bool)
  key = users * store.num_items + items
  for u, ids, mask in queries.values():
    rows = np.broadcast_to(u[:, None], ids.shape)[mask]
    held |= np.isin(key, rows * store.num_items + ids[mask])
  predict = fit_biased_mf(users[~held], items[~held], ratings[~held],
                          num_users=store.num_users,
                          num_items=store.num_items, dim=dim, reg=reg,
                          iters=iters)
  lo, hi = store.rating_range
  out = {}
  for name, (u, ids, _) in queries.items():
    flat = predict(np.repeat(u, ids.shape[1]), ids.reshape(-1))
    out[name] = np.clip(flat.reshape(ids.shape), lo, hi)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True,
                      help="the run whose store the tasks came from")
  parser.add_argument("--tasks", required=True,
                      help="a folder written by metarec eval --write_tasks")
  parser.add_argument("--scenarios", default=",".join(SCENARIOS))
  parser.add_argument("--mae", default="",
                      help="comma-separated MAEs of truth-plus-noise rows")
  parser.add_argument("--mf", action="store_true",
                      help="fit and score the transductive MF reference")
  parser.add_argument("--mf_dim", type=toolkit.positive_int, default=32)
  parser.add_argument("--mf_reg", type=toolkit.positive_float, default=10.0)
  parser.add_argument("--mf_iters", type=toolkit.positive_int, default=12)
  parser.add_argument("--k", type=toolkit.positive_int, default=3)
  parser.add_argument("--repeats", type=toolkit.positive_int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  try:
    targets = [float(v) for v in args.mae.split(",") if v]
  except ValueError:
    parser.error(f"--mae={args.mae}: comma-separated numbers")
  if not all(0 <= t < float("inf") for t in targets):
    parser.error(f"--mae={args.mae}: comma-separated numbers >= 0")
  config = config_io.read_workdir_config(args.workdir)
  store = store_lib.open_store(prepare.store_path(config.data, args.workdir))
  width = int(config.data.query_size)
  arrays = {}
  for name in args.scenarios.split(","):
    path = os.path.join(args.tasks, name, predictions_file.FILE_NAME)
    a = predictions_file.task_arrays(path, store, width)
    if len(a["rating"]):
      arrays[name] = a
  mf = {}
  if args.mf:
    if any((a["users"] < 0).any() or (a["items"] < 0).any()
           for a in arrays.values()):
      parser.error("--mf needs tasks of the store's own users and items "
                   "(not of a --ratings file)")
    mf = mf_predictions(
        store, {n: (a["users"], a["items"], np.ones_like(a["items"], bool))
                for n, a in arrays.items()},
        dim=args.mf_dim, reg=args.mf_reg, iters=args.mf_iters)
  for name, a in arrays.items():
    true = a["rating"]
    mask = np.ones_like(true, bool)
    rows = {column: (a[column], predictions_file.ranked(a, column))
            for column in PREDICTION_COLUMNS}
    if name in mf:
      rows["mf"] = (mf[name], mf[name])
    for predictor, (pred, rank_by) in rows.items():
      print(json.dumps({"scenario": name, "predictor": predictor,
                        "tasks": len(true),
                        **scores(pred, true, mask, args.k, rank_by)}))
    for target in (float(v) for v in args.mae.split(",") if v):
      print(json.dumps({"scenario": name, "predictor": f"noise@{target}",
                        **noisy_scores(true, mask, target_mae=target,
                                       k=args.k, repeats=args.repeats,
                                       seed=args.seed)}))


if __name__ == "__main__":
  toolkit.run(main)
