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


@pytest.fixture(scope="module")
def click_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("clicks")
  click_log(str(root))
  config = config_io.apply_overrides(
      config_io.load_config_file(config_path("tiny")),
      [("data.name", "generic"), ("data.root", str(root)),
       ("data.generic.ratings", "clicks.csv"), ("data.generic.rating_col", ""),
       ("data.implicit.enabled", "true"), ("model.loss", "bpr"),
       ("train.num_steps", "6"), ("train.eval_every_steps", "3")])
  workdir = str(root / "run")
  train_and_evaluate(config, workdir)
  return workdir


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
