"""The initial state is a validated candidate: a run that training only
makes worse keeps its start, which for the anchored model is the
item-mean + user-bias baseline itself."""

import json
import os

import pytest

from conftest import config_path
from metarec_jax import config_io
from metarec_jax.workdir import checkpoint as ckpt_lib


def test_a_run_that_only_gets_worse_keeps_its_anchored_start(tmp_path):
  from metarec_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = config_io.load_config_file(config_path("tiny"))
  # A learning rate that can only hurt: every validation after the start
  # is worse than the start.
  config_io.apply_overrides(config, [("train.lr", "1.0"),
                                     ("train.warmup_steps", "0"),
                                     ("data.buckets", "(16,)")])
  workdir = str(tmp_path / "run")
  summary = train_and_evaluate(config, workdir)
  best = summary["best"]
  assert best["step"] == 0
  # The anchored model before training is the baseline, through the whole
  # validation path.
  baseline = best["val"]["baselines"]["item_mean_user_bias"]["mae"]
  assert best["val"]["mae"] == pytest.approx(baseline, abs=1e-5)
  assert summary["val"]["mae"] > best["val"]["mae"]  # training hurt
  reader = ckpt_lib.Checkpointer(workdir, read_only=True)
  assert reader.best() == (0, pytest.approx(best["val"]["mae"]))
  reader.close()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert rows[0]["step"] == 0 and "val/mae" in rows[0]
  report = eval_lib.evaluate_workdir(workdir, support_curve=False)
  assert report["step"] == 0  # eval takes the best validated checkpoint
