"""Honest warnings about an evaluation: the model lost, or too few tasks.

A meta-learner is worth running only where it beats the model-free
item-mean + user-bias baseline computed on the very same tasks; `metarec
train` (on the validation users) and `metarec eval` (on every scenario) say
so when it does not, and when a scenario has too few tasks for its
figures to mean anything.
"""

from __future__ import annotations

BASELINE = "item_mean_user_bias"
# Below this many tasks a scenario's MAE moves by several percent between
# seeds (ML-100K's IC has 6 tasks, UIC 1): too few to compare models.
MIN_TASKS = 50
# A model within this relative margin of the baseline ties with it: where
# the ratings hold nothing but biases the best model is the baseline, and
# its checkpoint or share may differ from it by 0.01% either way.
TIE = 0.001

ADVICE = ("try: the baseline-anchored model (model.anchor=true, the"
          " default), the best validated checkpoint (the default of eval),"
          " fewer features (model.features, model.exclude_features),"
          " a smaller model (model.embed_dim, model.hidden), or fewer"
          " train.num_steps on small data")
# An anchored model already falls back to the baseline wherever its
# validation shows no gain; a loss means what was validated (its shares,
# median map, new-item prior) did not carry over from the validation users.
ADVICE_ANCHORED = ("try: more validation users (eval.val_fraction), so"
                   " that what is validated on them (the shares, the median"
                   " map, the new-item prior) carries over to these tasks,"
                   " or serving without the map (model.calibration=none)")


def warnings_for(results: dict[str, dict], *, min_tasks: int = MIN_TASKS,
                 anchored: bool = False) -> list[str]:
  """One line per problem of a report's `{scenario: metrics}`.

  Warns when a scenario with tasks has a query MAE above the item-mean +
  user-bias baseline's by more than `TIE` (with what to try: `anchored`
  says whether the model is anchored on the baseline, whose advice
  differs; on fewer than `min_tasks` tasks it says the gap is within noise
  instead), and when it has fewer than `min_tasks` tasks. Scenarios
  without tasks say nothing.
  """
  out = []
  for name, m in results.items():
    tasks = int(m.get("tasks") or 0)
    if not tasks:
      continue
    if tasks < min_tasks:
      out.append(f"{name}: only {tasks} task(s) (fewer than {min_tasks}):"
                 " its metrics are too noisy to compare models")
    base = (m.get("baselines") or {}).get(BASELINE, {}).get("mae")
    mae = m.get("mae")
    if mae is not None and base is not None and mae > base * (1 + TIE):
      what = (f"on {tasks} task(s), too few to tell it from noise"
              if tasks < min_tasks else
              ADVICE_ANCHORED if anchored else ADVICE)
      out.append(f"{name}: the model's query MAE {mae:.4f} is WORSE than the"
                 f" item-mean + user-bias baseline's {base:.4f}"
                 f" ({100 * (mae / base - 1):+.1f}%) on the same tasks; "
                 + what)
  return out
