"""The human-readable table of a `metarec eval` report."""

from __future__ import annotations


def format_table(report: dict) -> str:
  """A human-readable table of an `evaluate_workdir` report."""
  def f(x):
    return "    -" if x is None else f"{x:.4f}"
  if any("ranking" in m for m in report["scenarios"].values()):
    return _ranking_table(report, f)
  lines = [f"step {report['step']}",
           "scenario  tasks     MAE  unadapted    RMSE  nDCG@1  nDCG@3"
           "  | item+bias MAE  nDCG@3  | global MAE"]
  for name, m in report["scenarios"].items():
    base = m["baselines"]
    bias = base["item_mean_user_bias"]
    lines.append(
        f"{name:<8} {m['tasks']:6d}  {f(m['mae'])}     {f(m['mae_unadapted'])}"
        f"  {f(m['rmse'])}  {f(m['ndcg@1'])}  {f(m['ndcg@3'])}"
        f"  |        {f(bias['mae'])}  {f(bias['ndcg@3'])}  |     "
        f"{f(base['global_mean']['mae'])}")
  lines.append("nDCG: gain 2^rating - 1 (the protocol's); the JSON also has"
               " the linear gain (ndcg@k_linear)")
  return "\n".join(lines)


def _ranking_table(report: dict, f) -> str:
  """`format_table` of implicit data: top-k metrics and the baselines."""
  lines = [f"step {report['step']}",
           "scenario  tasks  candidates  HR@10  nDCG@10  Recall@20   MRR"
           "     AUC  | popularity HR@10 nDCG@10 | random nDCG@10"]
  for name, m in report["scenarios"].items():
    r = m["ranking"]
    for how in ("full", "sampled"):
      x = r[how]
      pop = r["baselines"]["popularity"][how]
      rnd = r["baselines"]["random"][how]
      lines.append(
          f"{name:<8} {m['tasks']:6d}  {how:<10} {f(x['hr@10'])}"
          f"  {f(x['ndcg@10'])}     {f(x['recall@20'])} {f(x['mrr'])}"
          f"  {f(x['auc'])}  |           {f(pop['hr@10'])}  "
          f"{f(pop['ndcg@10'])} |         {f(rnd['ndcg@10'])}")
  return "\n".join(lines)
