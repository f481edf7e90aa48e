"""`tools/compare.py`: trains runs, writes the table and the raw results.

The two runs are `configs/tiny.py` with `model.name=idemb` (maml and
fomaml): this is also the idemb model's end-to-end run (store, sampler with
the `item_id` feature, sharded meta-step, checkpoint, evaluation).
"""

import importlib.util
import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, config_path
from metarec_jax import config_io, experiment, meta, models
from metarec_jax.data.convert import synthetic
from metarec_jax.data.store import open_store
from metarec_jax.data.tasks import FeatureTables

COMMON = ["--config.model.name=idemb", "--config.train.num_steps=2",
          "--config.data.buckets=(16,)", "--config.eval.max_tasks=16"]


def load_tool():
  spec = importlib.util.spec_from_file_location(
      "compare_tool", os.path.join(ROOT, "tools", "compare.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


compare = load_tool()


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("compare"))
  tiny = config_path("tiny")
  args = [f"--out={out}", f"--run=maml {tiny}",
          f"--run=fomaml {tiny} meta.algorithm=fomaml"] + COMMON
  assert compare.main(args) == 0
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  with open(os.path.join(out, "table.md")) as f:
    table = f.read()
  return out, args, results, table


def parse_table(table):
  lines = [l for l in table.splitlines() if l.startswith("|")]
  cells = [[c.strip() for c in l.strip("|").split("|")] for l in lines]
  return cells[0], {row[0]: dict(zip(cells[0], row)) for row in cells[2:]}


def test_table_has_a_row_per_run_and_baseline(compared):
  _, _, _, table = compared
  header, rows = parse_table(table)
  assert header == ["run", "W MAE", "W nDCG@3", "UC MAE", "UC nDCG@3",
                    "IC MAE", "IC nDCG@3", "UIC MAE", "UIC nDCG@3",
                    "train min"]
  assert list(rows) == ["maml", "fomaml", "global_mean",
                        "item_mean_user_bias"]
  assert "Seeds: train.seed 0; eval.seed 0" in table


def test_table_numbers_are_the_eval_reports(compared):
  _, _, results, table = compared
  _, rows = parse_table(table)
  for name in ("maml", "fomaml"):
    (result,) = results["runs"][name]
    report = result["eval"]
    assert report["step"] == 2
    assert result["config"]["model"]["name"] == "idemb"
    for scenario in ("W", "UC", "IC", "UIC"):
      m = report["scenarios"][scenario]
      for key, label in (("mae", "MAE"), ("ndcg@3", "nDCG@3")):
        cell = rows[name][f"{scenario} {label}"]
        if m[key] is None:  # tiny synthetic data has no new items
          assert cell == "-"
        else:
          assert cell == f"{m[key]:.4f}"
    assert rows[name]["train min"] == f"{result['train_seconds'] / 60:.2f}"
    assert result["train_seconds"] > 0 and not result["resumed"]
    base = report["scenarios"]["UC"]["baselines"]
    for baseline in ("global_mean", "item_mean_user_bias"):
      assert rows[baseline]["UC MAE"] == f"{base[baseline]['mae']:.4f}"
      assert rows[baseline]["train min"] == "-"
  uc = results["runs"]["maml"][0]["eval"]["scenarios"]["UC"]
  assert uc["tasks"] > 0 and np.isfinite(uc["mae"])
  # fomaml really is the first-order run.
  assert results["runs"]["fomaml"][0]["config"]["meta"]["algorithm"] == (
      "fomaml")


def test_rerun_reuses_finished_runs_and_reads_json_specs(compared, tmp_path,
                                                          capsys):
  out, args, results, table = compared
  spec = tmp_path / "spec.json"
  spec.write_text(json.dumps({
      "runs": [{"name": "maml", "config": config_path("tiny")},
               {"name": "fomaml", "config": config_path("tiny"),
                "overrides": {"meta.algorithm": "fomaml"}}],
      "overrides": [a[len("--config."):] for a in COMMON]}))
  assert compare.main([f"--out={out}", f"--spec={spec}"]) == 0
  printed = capsys.readouterr().out
  assert json.loads(printed.strip().splitlines()[-1])["table"].endswith(
      "table.md")
  with open(os.path.join(out, "results.json")) as f:
    again = json.load(f)
  for name in ("maml", "fomaml"):  # reused, not retrained
    assert again["runs"][name][0]["train_seconds"] == (
        results["runs"][name][0]["train_seconds"])
  with open(os.path.join(out, "table.md")) as f:
    assert f.read() == table


@pytest.mark.parametrize("args,message", [
    (["--run=onlyaname"], "NAME CONFIG"),
    (["--run=a configs/tiny.py meta.inner_steps"], "KEY=VALUE"),
    (["--run=a configs/tiny.py", "--run=a configs/tiny.py"], "duplicate"),
    (["--run=a configs/tiny.py meta.nope=1"], "unknown config key"),
    (["--spec=missing.json"], "no such spec file"),
])
def test_input_errors_exit_2(tmp_path, capsys, args, message):
  assert compare.main([f"--out={tmp_path}"] + args) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


def test_every_algorithm_variant_resolves(tmp_path):
  """`configs/algorithms.py`: each variant is a valid config and algorithm
  (the adapt patterns match the model's parameters)."""
  runs, _, _ = compare.load_spec(
      os.path.join(ROOT, "configs", "algorithms.py"))
  names = [r.name for r in runs]
  assert {"maml", "fomaml", "reptile", "metasgd", "mamlpp", "anil",
          "pretrain", "idemb"} <= set(names)
  spec = synthetic.SyntheticSpec(num_users=30, num_items=20, min_ratings=10,
                                 max_ratings=15, director_vocab=5,
                                 actor_vocab=5, zip_vocab=5)
  synthetic.generate(spec, tmp_path / "store")
  store = open_store(tmp_path / "store")
  algorithms = set()
  for run in runs:
    config = config_io.load_config_file(run.config)
    tables = FeatureTables.from_store(
        store, tuple(config.model.features),
        item_id=models.needs_item_id(config.model))
    model = models.build(config.model, tables.specs, rating_mean=3.0)
    mc = experiment.meta_config(config, model,
                                inner_rate=experiment.inner_lr(config, store))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    assert any(meta.adapt_mask(params, mc.adapt))
    algorithms.add(mc.algorithm)
    if run.name == "anil":  # (and `warm`, which an anchored model adds)
      assert mc.adapt == ("^decision/out/",) + (
          ("^warm$",) if "warm" in params else ())
  assert algorithms == {"maml", "reptile", "metasgd", "mamlpp", "pretrain"}


@pytest.fixture
def fake_training(monkeypatch):
  """Training and evaluation replaced by instant fakes whose MAE is
  `0.5 + 0.1 * train.seed`; returns the list of trained work directories."""
  trained = []

  def train_and_evaluate(config, workdir):
    os.makedirs(workdir, exist_ok=True)
    config_io.write_workdir_config(workdir, config)
    trained.append(workdir)
    return {"step": 2}

  def evaluate_workdir(workdir, **kwargs):
    del kwargs
    seed = int(config_io.read_workdir_config(workdir).train.seed)
    base = {b: {"mae": 1.0, "ndcg@3": 0.5} for b in compare.BASELINES}
    return {"step": 2, "scenarios": {
        s: {"mae": 0.5 + 0.1 * seed, "ndcg@3": 0.9, "baselines": base}
        for s in compare.SCENARIOS}}

  monkeypatch.setattr("metarec_jax.train.train_and_evaluate",
                      train_and_evaluate)
  monkeypatch.setattr("metarec_jax.eval.evaluate_workdir", evaluate_workdir)
  return trained


def test_force_retrains_and_another_config_is_an_error(tmp_path,
                                                       fake_training, capsys):
  out, run = f"--out={tmp_path}", f"--run=a {config_path('tiny')}"
  assert compare.main([out, run]) == 0
  assert compare.main([out, run]) == 0  # reused
  assert len(fake_training) == 1
  changed = run + " meta.inner_steps=1"
  assert compare.main([out, changed]) == 2
  assert "another config" in capsys.readouterr().err
  assert compare.main([out, changed, "--force"]) == 0
  assert len(fake_training) == 2
  with open(os.path.join(tmp_path, "results.json")) as f:
    assert json.load(f)["runs"]["a"][0]["config"]["meta"]["inner_steps"] == 1


@pytest.mark.parametrize("where", [(), ("runs",)])
def test_a_file_as_out_or_its_runs_is_one_line_and_exit_2(
    tmp_path, fake_training, capsys, where):
  """`--out=FILE` ended in a FileExistsError traceback, a file at
  OUT/runs in a NotADirectoryError one."""
  out = tmp_path / "out"
  path = out.joinpath(*where)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("x\n")
  assert compare.main([f"--out={out}",
                       f"--run=a {config_path('tiny')}"]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"compare.py: error: {path}: is a file, not a folder"]
  assert path.read_text() == "x\n" and not fake_training


def test_a_result_without_its_report_is_one_line_and_exit_2(
    tmp_path, fake_training, capsys):
  """A reused result.json of the same config but without its eval report
  (edited by hand) ended the table in a KeyError traceback; a config.json
  whose `config` is no object, in an AttributeError one."""
  out, run = f"--out={tmp_path}", f"--run=a {config_path('tiny')}"
  assert compare.main([out, run]) == 0
  workdir = tmp_path / "runs" / "a"
  result = json.loads((workdir / "result.json").read_text())
  del result["eval"]
  (workdir / "result.json").write_text(json.dumps(result))
  capsys.readouterr()
  assert compare.main([out, run]) == 2
  err = capsys.readouterr().err
  assert err.strip().splitlines() == [
      f"compare.py: error: {workdir / 'result.json'}: not a result: no eval"
      " report with scenarios or no train_seconds; delete it to evaluate"
      " the run again"]
  (workdir / "result.json").unlink()
  (workdir / "config.json").write_text('{"config": [1]}')
  assert compare.main([out, run]) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err and "config.json: its config is a JSON list" in err
  assert len(fake_training) == 1


@pytest.mark.parametrize("damage,named", [
    (("result.json", '{"name": "a", "config": {'), "result.json"),
    (("result.json", "[1]"), "result.json"),
    (("config.json", "{bad"), "config.json"),
    (("config.json", '"text"'), "config.json"),
    ((None, "a file"), os.path.join("runs", "a")),
])
def test_a_damaged_run_folder_is_one_line_and_exit_2(
    tmp_path, fake_training, capsys, damage, named):
  """A run's result.json or config.json cut short or edited by hand, or
  a file where its work directory goes: one line naming it, not a
  traceback (json.load's ValueError, an AttributeError, makedirs)."""
  out, run = f"--out={tmp_path}", f"--run=a {config_path('tiny')}"
  assert compare.main([out, run]) == 0
  workdir = tmp_path / "runs" / "a"
  name, text = damage
  if name is None:
    shutil.rmtree(workdir)
    workdir.write_text(text)
  else:
    if name == "config.json":
      (workdir / "result.json").unlink()
    (workdir / name).write_text(text)
  capsys.readouterr()
  assert compare.main([out, run]) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert named in err
  assert len(fake_training) == 1  # nothing retrained over it


def test_seeds_give_mean_and_standard_deviation(tmp_path, fake_training):
  assert compare.main([f"--out={tmp_path}", "--seeds=0,1",
                       f"--run=a {config_path('tiny')}"]) == 0
  assert sorted(os.path.basename(w) for w in fake_training) == [
      "seed-0", "seed-1"]
  with open(os.path.join(tmp_path, "table.md")) as f:
    table = f.read()
  _, rows = parse_table(table)
  assert rows["a"]["UC MAE"] == f"0.5500 ± {np.std([0.5, 0.6], ddof=1):.4f}"
  assert rows["global_mean"]["UC MAE"] == "1.0000"
  assert "train.seed 0, 1 (mean ± std over 2 seeds)" in table


def test_bad_values_and_repeated_seeds_are_refused_before_anything_trains(
    tmp_path, capsys, fake_training):
  """A bad value in the last run was refused after the first ones trained;
  `--seeds=0,0` trained once and reported "mean ± std over 2 seeds"
  (helper B)."""
  tiny = config_path("tiny")
  assert compare.main([f"--out={tmp_path}", f"--run=a {tiny}",
                       f"--run=b {tiny} train.tasks_per_step=0"]) == 2
  assert ("run 'b': config key train.tasks_per_step=0: must be"
          in capsys.readouterr().err)
  assert compare.main([f"--out={tmp_path}", "--seeds=0,0",
                       f"--run=a {tiny}"]) == 2
  assert "seeds [0, 0] repeat a seed" in capsys.readouterr().err
  assert not fake_training and not os.path.exists(tmp_path / "runs")


def test_runs_set_up_the_runtime_like_the_cli(tmp_path, fake_training,
                                              monkeypatch):
  # The CLI's device split and persistent compilation cache, with the
  # first run's config: train times are comparable with `metarec train`.
  calls = []
  monkeypatch.setattr("metarec_jax.cli.setup_runtime",
                      lambda config, **kw: calls.append((config, kw)))
  assert compare.main([f"--out={tmp_path}", f"--run=a {config_path('tiny')}"
                       " train.cpu_devices=1"]) == 0
  [(config, kwargs)] = calls
  assert config.train.cpu_devices == 1 and kwargs == {}


def test_an_interrupted_run_with_resolved_keys_is_resumed(tmp_path,
                                                          fake_training):
  """Its config.json holds what the run resolved from 0 (the validation
  share, the schedule's length): the same config, so training resumes."""
  out, run = f"--out={tmp_path}", f"--run=a {config_path('tiny')}"
  assert compare.main([out, run]) == 0
  workdir = fake_training[0]
  os.remove(os.path.join(workdir, compare.RESULT))  # interrupted
  config = config_io.read_workdir_config(workdir)
  config.eval.val_fraction = 0.2525
  config.train.schedule_steps = 6
  config_io.write_workdir_config(workdir, config)
  assert compare.main([out, run]) == 0
  assert fake_training == [workdir, workdir]


def test_help_prints_the_usage(capsys):
  for flag in ("--help", "-h"):
    assert compare.main([flag]) == 0
    assert "python tools/compare.py" in capsys.readouterr().out


def test_table_of_implicit_runs_shows_their_ranking():
  """An implicit run's report has null rating metrics: its table was all
  `-`, the baselines' rows too. It shows the full-catalog nDCG@10 and
  HR@10 of the model and of the popularity and random rankings."""
  def scenario(tasks, model, popularity):
    def full(ndcg):
      return {"full": {"ndcg@10": ndcg,
                       "hr@10": None if ndcg is None else ndcg + 0.5},
              "sampled": {"ndcg@10": 0.9, "hr@10": 0.9}}
    return {"mae": None, "ndcg@3": None, "tasks": tasks,
            "baselines": {"global_mean": {"mae": None},
                          "item_mean_user_bias": {"mae": None}},
            "ranking": {**full(model), "baselines": {
                "popularity": full(popularity), "random": full(0.01)}}}
  report = {"step": 3, "scenarios": {
      "W": scenario(24, 0.25, 0.2), "UC": scenario(24, 0.3, 0.35),
      "IC": scenario(0, None, None), "UIC": scenario(0, None, None)}}
  result = {"eval": report, "train_seconds": 60.0, "seed": 0,
            "config": {"data": {"name": "generic"}, "eval": {"seed": 0}}}
  header, rows = parse_table(compare.make_table({"bce": [result]}))
  assert header[1:5] == ["W nDCG@10", "W HR@10", "UC nDCG@10", "UC HR@10"]
  assert list(rows) == ["bce", "popularity", "random"]
  assert rows["bce"]["W nDCG@10"] == "0.2500"
  assert rows["bce"]["UC HR@10"] == "0.8000"
  assert rows["bce"]["IC nDCG@10"] == "-"
  assert rows["popularity"]["UC nDCG@10"] == "0.3500"
  assert rows["random"]["W HR@10"] == "0.5100"
  assert "full-catalog nDCG@10 and HR@10" in compare.seeds_note(
      {"bce": [result]})


@pytest.mark.parametrize("seeds", ['["x"]', "3", "[1.5]", "[true]"])
def test_a_spec_of_bad_seeds_is_a_one_line_error(tmp_path, capsys, seeds):
  """`"seeds": ["x"]` or `3` in a spec file was a ValueError or TypeError
  traceback (exit 1)."""
  spec = tmp_path / "spec.json"
  spec.write_text('{"runs": [{"name": "a", "config": "configs/tiny.py"}],'
                  f' "seeds": {seeds}}}')
  assert compare.main([f"--out={tmp_path / 'out'}", f"--spec={spec}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"compare.py: error: {spec}: seeds must be a list of"
                 f" integers, not {json.loads(seeds)!r}"]
  assert not (tmp_path / "out").exists()
