"""TensorBoard output, read back with TensorBoard's own reader."""

import json
import math
import os
import sys

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from metarec_jax import config_io, config_meanings
from metarec_jax.meta import paths
from metarec_jax.workdir import reporting, telemetry
from metarec_jax.workdir import state as state_lib
from conftest import config_path


def load_events(workdir):
  acc = plugin_event_accumulator.EventAccumulator(
      os.path.join(workdir, "tensorboard"),
      size_guidance={plugin_event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def series(acc, tag):
  return {e.step: tensor_util.make_ndarray(e.tensor_proto)
          for e in acc.Tensors(tag)}


def trained_params(workdir):
  """Leaf paths of the run's model parameters and learned inner rates."""
  from metarec_jax import experiment  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import optim  # pylint: disable=g-import-not-at-top
  config = config_io.read_workdir_config(workdir)
  exp = experiment.build(config, workdir)
  shapes = jax.eval_shape(
      lambda rng: state_lib.create(
          exp.model, exp.meta_config,
          optim.outer_optimizer(optim.hyperparams(config.train)), rng),
      jax.random.PRNGKey(0)).params
  model = dict(zip(paths.leaf_paths(shapes["model"]),
                   jax.tree.leaves(shapes["model"])))
  inner = dict(zip(paths.leaf_paths(shapes["inner"]),
                   jax.tree.leaves(shapes["inner"])))
  return model, inner


def test_every_training_tag_is_written_and_finite(tiny_metasgd_run):
  acc = load_events(tiny_metasgd_run)
  scalars = set(acc.PluginTagToContent("scalars"))
  _, inner = trained_params(tiny_metasgd_run)
  assert inner, "Meta-SGD learns inner rates"
  wanted = ["train/loss", "train/query_loss_unadapted", "train/grad_norm",
            "train/param_norm", "train/lr", "train/tasks_per_sec",
            "val/mae", "val/mae_unadapted", "val/rmse", "val/ndcg@1",
            "val/ndcg@3"] + [f"inner_lr/{p}" for p in inner]
  for tag in wanted:
    assert tag in scalars, tag
    values = series(acc, tag)
    assert values, tag
    assert all(np.isfinite(v).all() for v in values.values()), tag
  assert sorted(series(acc, "train/loss")) == [2, 4, 6]  # log.every_steps=2
  # eval_every_steps=3, and the start (step 0) of a fresh run
  assert sorted(series(acc, "val/mae")) == [0, 3, 6]
  # The learned rates start at meta.inner_lr and move with training.
  rates = [float(series(acc, f"inner_lr/{p}")[6]) for p in inner]
  assert all(0 < r < 1 for r in rates)
  assert any(r != pytest.approx(0.1, abs=1e-7) for r in rates)


def test_histograms_of_parameters_and_inner_rates(tiny_metasgd_run):
  acc = load_events(tiny_metasgd_run)
  histograms = set(acc.PluginTagToContent("histograms"))
  model, inner = trained_params(tiny_metasgd_run)
  expected = ({f"params/{p}" for p in model}
              | {f"inner_lr_hist/{p}" for p in inner})
  assert histograms == expected
  for tag in expected:
    # A scalar leaf (the anchored model's gate) has shape (), so look the
    # tag up by its prefix rather than by the leaf's truth value.
    kind, _, path = tag.partition("/")
    shape = (model if kind == "params" else inner)[path].shape
    by_step = series(acc, tag)
    assert sorted(by_step) == [4, 6]  # log.histogram_every_steps=4 and last
    buckets = by_step[6]
    assert buckets.shape == (reporting.HISTOGRAM_BINS, 3)
    assert np.isfinite(buckets).all()
    assert buckets[:, 2].sum() == int(np.prod(shape))  # every element counted
  # A scalar tag is never also a histogram tag (TensorBoard keeps one kind).
  assert not histograms & set(acc.PluginTagToContent("scalars"))


def test_hparams_hold_the_flat_config_and_metric_columns(tiny_metasgd_run):
  acc = load_events(tiny_metasgd_run)
  content = acc.PluginTagToContent("hparams")
  session = hparams_metadata.parse_session_start_info_plugin_data(
      content[hparams_metadata.SESSION_START_INFO_TAG])
  experiment = hparams_metadata.parse_experiment_plugin_data(
      content[hparams_metadata.EXPERIMENT_TAG])
  hp = session.hparams
  config = config_io.read_workdir_config(tiny_metasgd_run)
  assert set(hp) == set(config_io.flat(config))
  assert hp["meta.algorithm"].string_value == "metasgd"
  assert hp["train.num_steps"].number_value == 6
  assert hp["meta.second_order"].bool_value is True
  assert hp["data.buckets"].string_value == "(8, 16)"
  assert hp["data.list_pad.genre"].number_value == 4
  metric_tags = [m.name.tag for m in experiment.metric_infos]
  assert metric_tags == list(telemetry.HPARAM_METRICS)
  infos = {i.name: i for i in experiment.hparam_infos}
  assert set(infos) == set(hp)
  assert (infos["meta.inner_lr"].description
          == config_meanings.MEANINGS["meta.inner_lr"])
  assert "tensorflow" not in sys.modules


def test_metrics_jsonl_has_the_inner_rates(tiny_metasgd_run):
  _, inner = trained_params(tiny_metasgd_run)
  with open(os.path.join(tiny_metasgd_run, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  last_train = [r for r in records if "train/loss" in r][-1]
  assert last_train["step"] == 6
  for p in inner:
    assert math.isfinite(last_train[f"inner_lr/{p}"])


def test_histogram_buckets():
  b = reporting.histogram_buckets(np.array([0.0, 1.0, 1.0, np.nan, np.inf]),
                                  bins=4)
  assert b.shape == (4, 3)
  np.testing.assert_allclose(b[:, 0], [0, 0.25, 0.5, 0.75])
  np.testing.assert_allclose(b[:, 1], [0.25, 0.5, 0.75, 1.0])
  np.testing.assert_array_equal(b[:, 2], [1, 0, 0, 2])  # non-finite dropped
  spike = reporting.histogram_buckets(np.full(7, 0.1), bins=3)
  np.testing.assert_array_equal(spike, [[0.1, 0.1, 0], [0.1, 0.1, 0],
                                        [0.1, 0.1, 7]])
  assert not reporting.histogram_buckets(np.array([np.nan]), bins=2).any()


def test_reporter_round_trip(tmp_path):
  reporter = reporting.Reporter(str(tmp_path))
  reporter.hparams({"a.b": (1, 2), "c": "x", "d": True, "e": 3},
                   ["loss"])
  reporter.scalars(1, {"loss": 0.5, "bad": float("nan")})
  reporter.histograms(1, {"w": np.arange(10.0)})
  reporter.close()
  with open(tmp_path / "metrics.jsonl") as f:
    assert json.loads(f.read()) == {"step": 1, "loss": 0.5, "bad": None}
  acc = load_events(str(tmp_path))
  assert set(acc.PluginTagToContent("scalars")) == {"loss"}  # NaN skipped
  assert float(series(acc, "loss")[1]) == 0.5
  assert series(acc, "w")[1][:, 2].sum() == 10
  session = hparams_metadata.parse_session_start_info_plugin_data(
      acc.PluginTagToContent("hparams")[
          hparams_metadata.SESSION_START_INFO_TAG])
  assert session.hparams["a.b"].string_value == "(1, 2)"
  assert session.hparams["c"].string_value == "x"
  assert session.hparams["d"].bool_value is True
  assert session.hparams["e"].number_value == 3


def test_inactive_reporter_writes_nothing(tmp_path):
  reporter = reporting.Reporter(str(tmp_path), active=False)
  reporter.hparams({"a": 1}, ["loss"])
  reporter.scalars(1, {"loss": 0.5})
  reporter.histograms(1, {"w": np.ones(3)})
  reporter.close()
  assert not os.listdir(tmp_path)


def test_flat_hparams_of_a_config():
  config = config_io.load_config_file(config_path("tiny"))
  flat = reporting.flat_hparams(config)
  assert set(flat) == set(config_io.flat(config))
  assert flat["model.hidden"] == "(16, 16)"
  assert flat["model.features"] == "()"
  # to_dict turns tuples into lists; they read the same.
  assert reporting.flat_hparams(config_io.to_dict(config)) == flat


def test_inner_rate_scalars_per_leaf_and_per_step():
  inner = {"decision": {"fc1": {"kernel": np.array([[0.1, 0.3]]),
                                "bias": np.array([0.2, 0.2])}}}
  assert telemetry.inner_rate_scalars(inner, per_step=False) == {
      "inner_lr/decision/fc1/bias": pytest.approx(0.2),
      "inner_lr/decision/fc1/kernel": pytest.approx(0.2)}
  steps = {"out": {"kernel": np.array([0.1, 0.05, 0.02])}}  # MAML++
  assert telemetry.inner_rate_scalars(steps, per_step=True) == {
      "inner_lr/out/kernel": pytest.approx(0.17 / 3),
      "inner_lr/out/kernel/step_0": pytest.approx(0.1),
      "inner_lr/out/kernel/step_1": pytest.approx(0.05),
      "inner_lr/out/kernel/step_2": pytest.approx(0.02)}
  assert telemetry.inner_rate_scalars(None, per_step=False) == {}


def test_one_cadence_test_for_log_histogram_validation_and_checkpoint():
  from metarec_jax.train.loop import due  # pylint: disable=g-import-not-at-top
  assert [s for s in range(1, 13) if due(s, 5, 12)] == [5, 10, 12]
  assert [s for s in range(1, 13) if due(s, 0, 12)] == [12]  # only the end
  assert not any(due(s, -1, 12) for s in range(1, 13))  # never


def test_tensorboards_hparams_tab_lists_the_run_with_its_metrics(
    tiny_metasgd_run):
  # What the HParams dashboard asks the plugin's backend for.
  from tensorboard import context  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import data_provider  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import plugin_event_multiplexer  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins import base_plugin  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import api_pb2, backend_context  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import list_session_groups  # pylint: disable=g-import-not-at-top
  logdir = os.path.join(tiny_metasgd_run, "tensorboard")
  mux = plugin_event_multiplexer.EventMultiplexer()
  mux.AddRunsFromDirectory(logdir)
  mux.Reload()
  backend = backend_context.Context(base_plugin.TBContext(
      data_provider=data_provider.MultiplexerDataProvider(mux, logdir),
      logdir=logdir))
  request = api_pb2.ListSessionGroupsRequest(
      allowed_statuses=[api_pb2.STATUS_UNKNOWN], start_index=0,
      slice_size=10)
  groups = list_session_groups.Handler(context.RequestContext(), backend, "",
                                       request).run().session_groups
  assert len(groups) == 1
  assert groups[0].hparams["meta.algorithm"].string_value == "metasgd"
  metrics = {m.name.tag: m.value for m in groups[0].metric_values}
  assert set(metrics) == set(telemetry.HPARAM_METRICS)
  with open(os.path.join(tiny_metasgd_run, "metrics.jsonl")) as f:
    last_val = [json.loads(l) for l in f if '"val/mae"' in l][-1]
  assert metrics["val/mae"] == pytest.approx(last_val["val/mae"])


def test_eval_writes_every_scenario_to_tensorboard(tiny_metasgd_run):
  from metarec_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  report = eval_lib.evaluate_workdir(tiny_metasgd_run, support_curve=False)
  acc = plugin_event_accumulator.EventAccumulator(
      os.path.join(tiny_metasgd_run, "tensorboard", "eval"),
      size_guidance={plugin_event_accumulator.TENSORS: 0})
  acc.Reload()
  scalars = set(acc.PluginTagToContent("scalars"))
  scenarios = [s for s, m in report["scenarios"].items() if m["tasks"]]
  assert {"W", "UC"} <= set(scenarios)
  for scenario, m in report["scenarios"].items():
    if not m["tasks"]:  # an empty scenario has null metrics: no scalar
      assert f"{scenario}/mae" not in scalars
      continue
    for tag, want in [
        (f"{scenario}/mae", m["mae"]),
        (f"{scenario}/mae_unadapted", m["mae_unadapted"]),
        (f"{scenario}/ndcg@3", m["ndcg@3"]),
        (f"{scenario}/item_mean_user_bias/mae",
         m["baselines"]["item_mean_user_bias"]["mae"]),
        (f"{scenario}/global_mean/mae", m["baselines"]["global_mean"]["mae"])]:
      assert tag in scalars, tag
      assert series(acc, tag) == pytest.approx({report["step"]: want},
                                               rel=1e-6), tag


def test_a_resume_drops_a_row_that_is_not_utf8(tmp_path):
  """A damaged `metrics.jsonl` ended a resume in a UnicodeDecodeError: a
  line that is not UTF-8 is a bad row, dropped like any other."""
  reporter = reporting.Reporter(str(tmp_path))
  reporter.scalars(1, {"loss": 0.5})
  reporter.scalars(2, {"loss": 0.4})
  reporter.close()
  with open(tmp_path / "metrics.jsonl", "ab") as f:
    f.write(b'{"step": 1, "lo\xffss": 1}\n')
  resumed = reporting.Reporter(str(tmp_path))
  assert resumed.drop_rows_after(1) == 2
  resumed.close()
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(r) for r in rows] == [{"step": 1, "loss": 0.5}]


def test_a_resume_drops_a_row_whose_step_is_infinite(tmp_path):
  """A garbage row `{"step": Infinity}` (or 1e999) in `metrics.jsonl`
  ended a resume in an OverflowError traceback (int() of an infinite
  float): it is a bad row, dropped like any other."""
  reporter = reporting.Reporter(str(tmp_path))
  reporter.scalars(1, {"loss": 0.5})
  reporter.close()
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": Infinity}\n{"step": 1e999, "loss": 1}\n')
  resumed = reporting.Reporter(str(tmp_path))
  assert resumed.drop_rows_after(1) == 2
  resumed.close()
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(r) for r in rows] == [{"step": 1, "loss": 0.5}]


def test_a_resume_names_the_garbage_lines_it_drops(tmp_path, caplog):
  """Lines of `metrics.jsonl` that are no row were dropped silently by a
  resume; now one warning names the file and the lines (the rows past the
  restored step and a last line cut short by a kill go without one)."""
  reporter = reporting.Reporter(str(tmp_path))
  for step in (1, 2, 3):
    reporter.scalars(step, {"loss": 0.5})
  reporter.close()
  path = tmp_path / "metrics.jsonl"
  rows = path.read_text().splitlines(keepends=True)
  path.write_text(rows[0] + "garbage\n" + rows[1] + '["step"]\n' + rows[2]
                  + '{"step": 1, "lo')
  resumed = reporting.Reporter(str(tmp_path))
  with caplog.at_level("WARNING", logger="metarec"):
    assert resumed.drop_rows_after(2) == 4
  resumed.close()
  assert [r.getMessage() for r in caplog.records] == [
      f"{path}: dropped 2 line(s) that are not a JSON object with a step:"
      " line 2, 4"]
  assert [json.loads(r)["step"] for r in path.read_text().splitlines()] == [
      1, 2]


def test_the_step_rate_leaves_out_the_loops_other_work(monkeypatch):
  """`train/tasks_per_sec` counted a validation's and a save's time as the
  steps': the log step after each validation reported a rate some 20
  times too low."""
  from metarec_jax.workdir import telemetry  # pylint: disable=g-import-not-at-top
  clock = [100.0]
  monkeypatch.setattr(telemetry.time, "perf_counter", lambda: clock[0])
  rate = telemetry.StepRate(step=0, tasks_per_step=10)
  clock[0] += 1.0  # step 1
  rate.pause()
  clock[0] += 30.0  # a validation and a save
  rate.resume()
  clock[0] += 1.0  # step 2
  assert rate.at(2) == 10.0  # 20 tasks in the steps' 2 s
  rate.resume()  # without a pause: nothing to take out
  clock[0] += 4.0
  assert rate.at(4) == 5.0


def test_the_loop_pauses_the_step_rate_for_its_validations(tmp_path,
                                                           monkeypatch):
  """Every validation runs inside a pause of the rate's clock."""
  from metarec_jax.eval.evaluate import Evaluator  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  events = []

  class Recorded(telemetry.StepRate):

    def pause(self, steps_done=None):
      # The steps still running are waited for before a validation (the
      # review measured the window after one still 1.4x low without).
      events.append("pause" if steps_done is None else "pause, steps done")
      super().pause(steps_done)

    def resume(self):
      events.append("resume")
      super().resume()

  evaluate = Evaluator.evaluate

  def recorded_evaluate(self, *args, **kwargs):
    events.append("validate")
    return evaluate(self, *args, **kwargs)

  monkeypatch.setattr(telemetry, "StepRate", Recorded)
  monkeypatch.setattr(Evaluator, "evaluate", recorded_evaluate)
  config = config_io.load_config_file(config_path("tiny"))
  config.train.num_steps = 4
  config.train.eval_every_steps = 2
  config.train.early_stop_patience = 0
  train_and_evaluate(config, str(tmp_path / "run"))
  during_steps = [e for i, e in enumerate(events)
                  if e == "validate" and "pause, steps done" in events[:i]]
  assert during_steps, events
  for i, event in enumerate(events):
    if event == "validate" and "pause, steps done" in events[:i]:
      last = max(j for j in range(i) if events[j] != "validate")
      assert events[last] == "pause, steps done", events


def test_an_early_stopped_run_writes_its_histograms_at_the_end(tmp_path):
  """The histograms of the end (log.histogram_every_steps: "and at the
  end") were written only at train.num_steps, never where the run stopped
  early."""
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = config_io.load_config_file(config_path("tiny"))
  config.train.num_steps = 40
  config.train.eval_every_steps = 1
  config.train.early_stop_patience = 1
  config.log.histogram_every_steps = 1000
  # Plain MeLU at a fast rate: validation moves (the anchored tiny model
  # serves its baseline, every step alike), so the best step is not the
  # last.
  config.model.anchor = False
  config.train.lr = 0.05
  workdir = str(tmp_path / "run")
  summary = train_and_evaluate(config, workdir)
  assert summary.get("early_stopped"), summary
  acc = load_events(workdir)
  tags = [t for t in acc.PluginTagToContent("histograms")
          if t.startswith("params/")]
  assert tags
  assert sorted(series(acc, tags[0])) == [summary["step"]]
  # The support curve of the end is the best validated checkpoint's, the
  # one eval and export use (it was the last validated step's).
  from metarec_jax.eval import support_curve  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  checkpointer = ckpt_lib.Checkpointer(workdir)
  best = checkpointer.best()[0]
  checkpointer.close()
  assert best < summary["step"]
  assert support_curve.read(workdir)["step"] == best
  # ... and the summary carries that record, for train's warnings.
  assert summary["curve"] == support_curve.read(workdir)


def test_the_end_curve_falls_back_to_the_last_step_where_the_best_is_unread(
    caplog):
  """The best checkpoint restored for the end's support curve (also where
  the run reached train.num_steps past it); one that cannot be read costs
  the curve its step, not the finished run (helper R2: a traceback)."""
  import logging  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import start  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  def checkpointer(best, restore):
    return types.SimpleNamespace(wait=lambda: None, best=lambda: best,
                                 restore=restore)

  def unreadable(abstract, step):
    raise ckpt_lib.CheckpointError(f"the checkpoint of step {step} is"
                                   " damaged")

  def restored(abstract, step):
    return types.SimpleNamespace(params=f"params of {step}"), {}, step

  trainer = types.SimpleNamespace(abstract_state=lambda: None)
  assert start.curve_params(trainer, checkpointer((4, 0.5), restored), 8,
                            "last") == ("params of 4", 4)
  assert start.curve_params(trainer, checkpointer((8, 0.5), unreadable), 8,
                            "last") == ("last", 8)  # the best is the last
  assert start.curve_params(trainer, checkpointer(None, unreadable), 8,
                            "last") == ("last", 8)
  with caplog.at_level(logging.WARNING, logger="metarec"):
    assert start.curve_params(trainer, checkpointer((4, 0.5), unreadable),
                              8, "last") == ("last", 8)
  assert ("the support curve is of step 8: the checkpoint of step 4 is"
          " damaged") in caplog.text


def test_a_writer_thread_that_fails_at_once_prints_no_traceback(
    tmp_path, monkeypatch, capfd):
  """On a read-only copy of a run, TensorBoard's writer thread failed
  before `Reporter` had put its filter in place: `metarec eval` printed
  "Exception in thread ..." and a traceback beside its one-line warning."""
  import threading  # pylint: disable=g-import-not-at-top
  from metarec_jax.workdir import reporting  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)

  class FailingThread(threading.Thread):
    def run(self):
      raise OSError(30, "Read-only file system")

  # TensorBoard's module, which the filter recognises the thread by.
  FailingThread.__module__ = reporting.EventFileWriter.__module__

  class Writer:  # starts its thread in the constructor, as TensorBoard's
    def __init__(self, logdir):
      self.logdir = logdir
      thread = FailingThread()
      thread.start()
      thread.join()

  Writer.__module__ = FailingThread.__module__
  monkeypatch.setattr(reporting, "EventFileWriter", Writer)
  reporting.Reporter(str(tmp_path), jsonl=False)
  assert "Traceback" not in capfd.readouterr().err
