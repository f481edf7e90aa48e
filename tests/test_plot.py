"""`metarec plot`: learning and support-size curves as PNG files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from metarec_jax import plot
from metarec_jax.errors import InputError
from conftest import ROOT, config_path

PNG = b"\x89PNG\r\n\x1a\n"


def metarec(*args, prelude="pass"):
  code = (f"import sys; {prelude}; from metarec_jax.cli import main;"
          " sys.exit(main(sys.argv[1:]))")
  return subprocess.run([sys.executable, "-c", code, *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_plot_draws_both_figures_of_a_finished_run(tiny_metasgd_run):
  out = metarec("plot", f"--workdir={tiny_metasgd_run}")
  assert out.returncode == 0, out.stderr
  written = json.loads(out.stdout.strip().splitlines()[-1])["plots"]
  plots = os.path.join(tiny_metasgd_run, "plots")
  assert written == [os.path.join(plots, "learning_curves.png"),
                     os.path.join(plots, "support_curve.png")]
  for path in written:
    with open(path, "rb") as f:
      data = f.read()
    assert data.startswith(PNG) and len(data) > 5000, path
  assert sorted(os.listdir(plots)) == ["learning_curves.png",
                                       "support_curve.png"]  # no temp files


def test_a_broken_install_without_matplotlib_says_how_to_mend_it(tiny_metasgd_run):
  out = metarec("plot", f"--workdir={tiny_metasgd_run}",
                prelude="sys.modules['matplotlib'] = None")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      "metarec plot: error: plotting needs matplotlib, which this"
      " installation lacks: pip install matplotlib"]


def test_plot_of_a_directory_without_metrics_is_an_input_error(tmp_path):
  out = metarec("plot", f"--workdir={tmp_path}")
  assert out.returncode == 2
  assert "no metrics.jsonl" in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1


def test_read_metrics_keeps_the_last_value_of_a_repeated_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text(
      '{"step": 2, "train/loss": 3.0}\n'
      '{"step": 4, "train/loss": 2.0, "val/mae": null}\n'
      '{"step": 2, "train/loss": 2.5}\n'  # a resumed run repeats step 2
      '{"step": 4, "val/mae": 0.9}\n\n')
  series = plot.read_metrics(str(path))
  np.testing.assert_array_equal(series["train/loss"][0], [2, 4])
  np.testing.assert_array_equal(series["train/loss"][1], [2.5, 2.0])
  np.testing.assert_array_equal(series["val/mae"][0], [4])
  path.write_text('{"step": 2}\nnot json\n')
  with pytest.raises(InputError) as e:
    plot.read_metrics(str(path))
  assert e.value.line == 2


def test_a_last_line_cut_short_by_a_kill_is_not_read(tmp_path):
  """The state a kill or a full disk leaves until the next resume: `plot`
  exited 2 ("not a JSON object with a step") on it."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2, "train/loss": 3.0}\n{"step": 4, "train/lo')
  series = plot.read_metrics(str(path))
  np.testing.assert_array_equal(series["train/loss"][0], [2])


def test_a_line_that_is_not_utf8_is_named(tmp_path):
  """It was a UnicodeDecodeError traceback; a last line cut short within a
  character is not yet a row, as any cut-short line."""
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(b'{"step": 2, "train/loss": 3.0}\n\xff\n')
  with pytest.raises(InputError) as e:
    plot.read_metrics(str(path))
  assert (e.value.line, e.value.problem) == (2, "not UTF-8 text (byte 1 of"
                                             " the line)")
  path.write_bytes(b'{"step": 2, "train/loss": 3.0}\n{"step": 4, "\xc3')
  np.testing.assert_array_equal(plot.read_metrics(str(path))["train/loss"][0],
                                [2])


@pytest.mark.parametrize("content, problem", [
    ("[1]", "not a support curve (AttributeError"),
    ('{"step": 3, "scenarios": {"W": {"k": [1, 2]}}}',
     "not a support curve (KeyError"),
    ('{"step": 3, "scenarios": {"W": {"k": [1, 2], "tasks": [5, 5],'
     ' "mae": [0.5], "mae_unadapted": [0.6, 0.6],'
     ' "item_mean_user_bias": [1, 1]}}}',
     "not a support curve (ValueError: curves of unequal lengths)"),
    # An OverflowError / ValueError traceback while drawing the ticks,
    # after learning_curves.png; a 0 left the log axis without it.
    *((f'{{"step": 3, "scenarios": {{"W": {{"k": [{k}, 2], "tasks": [5, 5],'
       ' "mae": [0.5, 0.5], "mae_unadapted": [0.6, 0.6],'
       ' "item_mean_user_bias": [1, 1]}}}',
       "not a support curve (ValueError: support sizes k must be whole"
       " numbers >= 1") for k in ("Infinity", "NaN", "1e400", "0", "1.5")),
])
def test_a_malformed_support_curve_is_named_before_any_figure(
    tiny_metasgd_run, tmp_path, content, problem):
  """Tracebacks (AttributeError, KeyError) after learning_curves.png had
  been written."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(tiny_metasgd_run, workdir)
  shutil.rmtree(workdir / "plots", ignore_errors=True)
  (workdir / "eval" / "support_curve.json").write_text(content)
  with pytest.raises(InputError) as e:
    plot.plot_workdir(str(workdir))
  assert e.value.problem.startswith(problem), e.value.problem
  assert not (workdir / "plots").exists()


def test_a_step_beyond_any_integer_is_a_bad_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2}\n{"step": 1e400}\n')  # OverflowError before
  with pytest.raises(InputError) as e:
    plot.read_metrics(str(path))
  assert e.value.line == 2


def test_a_step_beyond_int64_is_a_bad_line(tmp_path):
  """An integer step past int64 ended `metarec plot` in an OverflowError
  traceback where the steps became a numpy array."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 2, "train/loss": 1}\n'
                  '{"step": 99999999999999999999, "train/loss": 1}\n')
  with pytest.raises(InputError) as e:
    plot.read_metrics(str(path))
  assert e.value.line == 2 and "not a JSON object with a step" in str(e.value)


def test_the_loss_label_names_the_query_loss_and_its_listwise_term():
  from metarec_jax import config_io  # pylint: disable=g-import-not-at-top
  from conftest import config_path  # pylint: disable=g-import-not-at-top
  config = config_io.load_config_file(config_path("tiny"))
  config.model.loss, config.model.query_rank_weight = "mse", 0.0
  assert plot.loss_label(config) == "MSE"
  config.model.query_loss, config.model.query_rank_weight = "huber", 20.0
  assert plot.loss_label(config) == "Huber + 20 x listwise"
  config.model.update(loss="softmax", query_loss="", query_rank_weight=0.0)
  assert plot.loss_label(config) == "sampled softmax"


def test_a_damaged_config_costs_the_loss_label_not_the_figures(
    tiny_metasgd_run, tmp_path, caplog):
  """The config only names the loss: a run whose config.json is damaged
  still plots from metrics.jsonl (it raised an InputError)."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(tiny_metasgd_run, workdir)
  shutil.rmtree(workdir / "plots", ignore_errors=True)
  (workdir / "config.json").write_text("{not json")
  written = plot.plot_workdir(str(workdir))
  assert [os.path.basename(p) for p in written] == ["learning_curves.png",
                                                    "support_curve.png"]
  assert "config.json" in caplog.text and "meta-loss" in caplog.text


def test_an_empty_metrics_file_is_said_to_have_nothing_to_plot(
    tiny_metasgd_run, tmp_path, caplog):
  """An empty `metrics.jsonl` gave `{"plots": []}` and exit 0 (or only the
  support curve) without a word; an empty `plots/` was made."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(tiny_metasgd_run, workdir)
  shutil.rmtree(workdir / "plots", ignore_errors=True)
  metrics = workdir / "metrics.jsonl"
  metrics.write_text("")
  with caplog.at_level("WARNING", logger="metarec"):
    written = plot.plot_workdir(str(workdir))
  assert written == [str(workdir / "plots" / "support_curve.png")]
  assert [r.getMessage() for r in caplog.records] == [
      f"{metrics}: no learning curves logged yet; plotting only the support"
      " curve"]
  shutil.rmtree(workdir / "plots")
  os.remove(workdir / "eval" / "support_curve.json")
  with pytest.raises(InputError) as e:
    plot.plot_workdir(str(workdir))
  assert e.value.message == (
      f"{metrics}: nothing to plot: no learning curves logged yet and no"
      " eval/support_curve.json (`metarec eval` writes one)")
  assert not (workdir / "plots").exists()


def test_a_file_at_plots_is_named(tmp_path):
  """A file standing at WORKDIR/plots: "plots: File exists", exit 1."""
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 0.5}\n')
  (tmp_path / "plots").write_text("")
  with pytest.raises(InputError) as e:
    plot.plot_workdir(str(tmp_path))
  assert e.value.message == (
      f"--workdir: {tmp_path / 'plots'} is a file, not a folder")


def drawn_labels(monkeypatch) -> list:
  """The legend label of every line drawn from now on, in order."""
  from matplotlib.axes import Axes  # pylint: disable=g-import-not-at-top
  drawn = []
  plot_line = Axes.plot

  def recorded(self, *args, **kwargs):
    drawn.append(kwargs.get("label"))
    return plot_line(self, *args, **kwargs)

  monkeypatch.setattr(Axes, "plot", recorded)
  return drawn


def test_the_validation_panel_draws_the_mae_through_the_median_map(
    tmp_path, monkeypatch):
  """Under train.select_on=served the checkpoints are chosen by the MAE
  through the median map; the panel drew only `val/mae`, whose best step
  was another."""
  drawn = drawn_labels(monkeypatch)
  steps = np.array([3, 6])
  series = {"val/mae": (steps, np.array([0.69, 0.68])),
            "val/median_map_mae": (steps, np.array([0.58, 0.59])),
            "val/median_map": (steps, np.array([1.0, 1.0]))}
  assert plot.plot_learning_curves(series, str(tmp_path / "c.png"))
  assert drawn == ["after adaptation", "through the median map"]
  # Where the map is not served (the review found the line drawn anyway,
  # read as a served MAE 0.04 better than what was served).
  drawn.clear()
  series["val/median_map"] = (steps, np.array([0.0, 0.0]))
  plot.plot_learning_curves(series, str(tmp_path / "d.png"))
  assert drawn == ["after adaptation"]


def test_the_learning_panels_share_one_step_axis(tmp_path, monkeypatch):
  """Training logged at steps 5 and 10 and validation at 0 to 12 were drawn
  on separate axes: training seemed to end before the run did."""
  figures = []
  save = plot._save  # pylint: disable=protected-access

  def kept(fig, path):
    figures.append(fig)
    return save(fig, path)

  monkeypatch.setattr(plot, "_save", kept)
  series = {"train/loss": (np.array([5, 10]), np.array([0.5, 0.4])),
            "val/mae": (np.array([0, 3, 6, 9, 12]),
                        np.array([0.7, 0.69, 0.68, 0.67, 0.66]))}
  plot.plot_learning_curves(series, str(tmp_path / "c.png"))
  first, second = figures[0].axes
  assert first.get_xlim() == second.get_xlim()


def test_a_pretrain_runs_loss_is_not_drawn_as_after_adaptation(
    tmp_path, monkeypatch):
  """`meta.algorithm=pretrain` logs its training loss (support and query,
  unadapted) as `train/loss`: drawn as "after adaptation" above "before
  adaptation", adapting looked harmful (helper B)."""
  from metarec_jax import config_io  # pylint: disable=g-import-not-at-top
  drawn = drawn_labels(monkeypatch)
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text(
      '{"step": 1, "train/loss": 0.59, "train/query_loss_unadapted": 0.46}\n')
  config = config_io.load_config_file(config_path("tiny"))
  for algorithm, label in (
      ("pretrain", "support and query, unadapted (pretrain's training"
                   " loss)"),
      ("maml", "after adaptation (meta-loss)")):
    config.meta.algorithm = algorithm
    config_io.write_workdir_config(str(workdir), config)
    drawn.clear()
    plot.plot_workdir(str(workdir))
    assert drawn[:2] == [label, "before adaptation"], drawn
