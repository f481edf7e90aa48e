"""What a run on a click log reports: HParams, plots, eval's notes.

One tiny implicit run (a generated click log, BPR, validated every 3
steps) read back as a user reads it.
"""

import json
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

import datafiles
from conftest import config_path
from metarec_jax import config_io
from metarec_jax.train import train_and_evaluate
from metarec_jax.workdir import telemetry


def click_log(folder, users=120, items=60, seed=0):
  """`user,item` lines: each user clicks 20 to 40 distinct items."""
  rng = np.random.default_rng(seed)
  lines = ["user,item"]
  for u in range(users):
    for i in rng.choice(items, rng.integers(20, 41), replace=False):
      lines.append(f"U{u},I{i}")
  return datafiles.write(os.path.join(folder, "clicks.csv"),
                         "\n".join(lines) + "\n")


def train_clicks(root, steps: int, eval_every: int) -> str:
  """The tiny config trained with BPR on `root/clicks.csv`; its workdir."""
  config = config_io.apply_overrides(
      config_io.load_config_file(config_path("tiny")),
      [("data.name", "generic"), ("data.root", str(root)),
       ("data.generic.ratings", "clicks.csv"), ("data.generic.rating_col", ""),
       ("data.implicit.enabled", "true"), ("model.loss", "bpr"),
       ("train.num_steps", str(steps)),
       ("train.eval_every_steps", str(eval_every))])
  workdir = str(root / "run")
  train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def click_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("clicks")
  click_log(str(root))
  return train_clicks(root, steps=6, eval_every=3)


def logged_tags(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return set().union(*(json.loads(line) for line in f))


def test_hparams_metrics_of_an_implicit_run_are_the_ranking_ones_it_logs(
    click_run):
  """They were the rating metrics (val/mae, ...), which an implicit run
  never logs: the HParams table's metric columns stayed empty."""
  acc = plugin_event_accumulator.EventAccumulator(
      os.path.join(click_run, "tensorboard"))
  acc.Reload()
  experiment = hparams_metadata.parse_experiment_plugin_data(
      acc.PluginTagToContent("hparams")[hparams_metadata.EXPERIMENT_TAG])
  tags = [m.name.tag for m in experiment.metric_infos]
  assert tags[0] == "val/ranking/full/ndcg@10"  # what selects checkpoints
  assert set(tags) <= logged_tags(click_run)
  assert tags == list(telemetry.hparam_metrics(True))
  assert telemetry.hparam_metrics(False) == telemetry.HPARAM_METRICS


def test_plot_names_the_runs_loss_and_draws_its_ranking_validation(
    click_run, monkeypatch):
  """The training panel said "query loss (MSE)" for a BPR run, and no
  validation panel was drawn (an implicit run logs no val/mae)."""
  from metarec_jax import plot  # pylint: disable=g-import-not-at-top
  figures = {}

  def keep(fig, path):
    figures[os.path.basename(path)] = fig
    return path

  monkeypatch.setattr(plot, "_save", keep)
  plot.plot_workdir(click_run)
  axes = figures["learning_curves.png"].axes
  assert [(ax.get_title(), ax.get_ylabel()) for ax in axes] == [
      ("meta-training", "query loss (BPR)"),
      ("validation", "nDCG@10 after adaptation")]
  steps, _ = plot.read_metrics(os.path.join(click_run, "metrics.jsonl"))[
      "val/ranking/full/ndcg@10"]
  full = axes[1].get_lines()[0]
  assert full.get_label().startswith("full catalog")
  assert full.get_xdata().tolist() == steps.tolist() == [0, 3, 6]


def test_eval_says_when_its_sampled_ranking_is_no_sample(click_run):
  """60 items, 20 to 40 clicks a user: fewer never-clicked items than the
  default 100 negatives per held-out positive, so `sampled` ranked every
  one of them and silently equalled `full`. The metrics are unchanged;
  the scenario counts such tasks and eval warns."""
  from metarec_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  report = eval_lib.evaluate_workdir(click_run, support_curve=False)
  with_tasks = {n: m for n, m in report["scenarios"].items() if m["tasks"]}
  assert with_tasks
  for name, m in with_tasks.items():
    r = m["ranking"]
    assert r["sampled_exhausted"] == m["tasks"], name
    assert r["sampled"] == r["full"], name  # what went unsaid
    assert any(w.startswith(f"{name}: the sampled ranking is no sample for"
                            f" {m['tasks']} of {m['tasks']} task(s)")
               for w in report["warnings"]), report["warnings"]
  # One negative per positive leaves a sample: nothing to say.
  report = eval_lib.evaluate_workdir(
      click_run, overrides=[("data.implicit.eval_negatives", "1")],
      support_curve=False)
  for name, m in report["scenarios"].items():
    assert m["ranking"]["sampled_exhausted"] == 0, name
  assert not any("no sample" in w for w in report["warnings"])


def test_eval_of_a_diverging_adaptation_is_an_error_not_a_ranking(click_run):
  """An inner rate at which the adaptation diverges (finite
  meta-parameters, NaN scores) was ranked as it came: NaN sorts last, so
  every metric read as a bad ranking (nDCG@10 0, the model WORSE than
  popularity) where rating data says the inner loop diverges."""
  from metarec_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  with pytest.raises(InputError, match=r"adapted scores of [\d,]+ task\(s\)"
                     r" .* are not finite: the inner loop diverges"):
    eval_lib.evaluate_workdir(click_run, support_curve=False,
                              overrides=[("meta.inner_lr", "1e30")])


def test_an_implicit_scenario_has_the_rating_keys_of_the_contract(click_run):
  """docs/design.md's eval JSON: every scenario has `ndcg@1_linear` and
  `ndcg@3_linear` (null where they do not exist); an implicit scenario and
  its baselines lacked them."""
  from metarec_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  from metarec_jax.eval import metrics  # pylint: disable=g-import-not-at-top
  empty = np.zeros((0, 1))
  keys = set(metrics.summary(empty, empty, empty.astype(bool)))
  assert {"ndcg@1_linear", "ndcg@3_linear"} <= keys
  report = eval_lib.evaluate_workdir(click_run, support_curve=False)
  for name, m in report["scenarios"].items():
    assert keys | {"mae_unadapted", "tasks", "baselines", "ranking"} == set(
        m), name
    assert all(m[k] is None for k in keys), name
    for base in m["baselines"].values():
      assert set(base) == keys and not any(base.values()), name


def test_tasks_with_nothing_to_rank_are_left_out_and_counted(tmp_path):
  """Users who clicked every item: a test task's candidates are its
  held-out positives alone, which every ranking orders perfectly (13 of
  84 tasks of a 50-item log counted as hits, for the model and both
  baselines alike)."""
  from metarec_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  lines = ["user,item"]
  for u in range(120):
    # Every third user clicked all 30 items; the others 15 to 25.
    clicks = (range(30) if u % 3 == 0
              else rng.choice(30, rng.integers(15, 26), replace=False))
    lines += [f"U{u},I{i}" for i in clicks]
  datafiles.write(str(tmp_path / "clicks.csv"), "\n".join(lines) + "\n")
  workdir = train_clicks(tmp_path, steps=2, eval_every=-1)
  report = eval_lib.evaluate_workdir(workdir, support_curve=False)
  counted = {name: m["ranking"]["unranked"]
             for name, m in report["scenarios"].items() if m["tasks"]}
  assert any(c["full"] for c in counted.values()), counted
  for name, c in counted.items():
    assert c["sampled"] >= c["full"], (name, c)  # its candidates are fewer
    if c["full"] or c["sampled"]:
      assert any(w.startswith(f"{name}: task(s) left out,")
                 for w in report["warnings"]), report["warnings"]
