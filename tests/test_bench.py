"""`metarec bench`: the JSON of docs/design.md and an honest FLOP count."""

import json

import pytest

from conftest import config_path
from procs import metarec
from metarec_jax import bench, config_io, experiment

KEYS = {"tasks_per_sec", "step_seconds", "step_flops", "achieved_gflops",
        "peak_gflops", "utilization", "compile_seconds",
        "input_wait_fraction", "input_tasks_per_sec", "peak_rss_mb",
        "adapt_seconds", "device_tasks_per_sec",
        "param_bytes_per_device", "device_memory", "workload"}


def test_bench_prints_the_design_json_last(tmp_path):
  out = metarec("bench", f"--config={config_path('tiny')}", "--steps=3",
                "--config.data.buckets=(16,)",
                "--config.meta.algorithm=fomaml",
                "--warmup=1", f"--workdir={tmp_path}")
  assert out.returncode == 0, out.stderr
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(result) == KEYS
  assert result["device_memory"] is None  # CPU keeps no statistics
  for key in KEYS - {"workload", "device_memory"}:
    assert result[key] >= 0
  assert result["tasks_per_sec"] == pytest.approx(
      16 / result["step_seconds"])
  assert result["achieved_gflops"] == pytest.approx(
      result["step_flops"] / result["step_seconds"] / 1e9)
  assert result["utilization"] == pytest.approx(
      result["achieved_gflops"] / result["peak_gflops"])
  w = result["workload"]
  assert w["tasks_per_step"] == 16
  # The algorithm as asked, beside the order it runs at.
  assert w["algorithm"] == "fomaml" and w["second_order"] is False
  assert w["plain_flops_per_task"] > 0 and w["steps_timed"] == 3
  assert w["input_workers"] == 1 and result["input_tasks_per_sec"] > 0
  # Utilisation is against the matmul rate of the step's compute dtype.
  assert w["compute_dtype"] == "float32"
  assert set(w["matmul_gflops"]) == {"float32", "bfloat16"}
  assert result["peak_gflops"] == w["matmul_gflops"]["float32"]


def test_flop_count_grows_by_the_same_amount_per_inner_step(tmp_path):
  """XLA counts a rolled `while` body once; the bench counts an unrolled
  lowering, so every inner step adds the same FLOPs."""
  per_task = []
  for steps in (1, 2, 3):
    config = config_io.load_config_file(config_path("tiny"))
    config.meta.inner_steps = steps
    config.meta.unroll = 1  # the config's own unroll must not matter
    exp = experiment.build(config, str(tmp_path))
    per_task.append(bench._counted_flops(config, str(tmp_path), exp, 16) / 16)  # pylint: disable=protected-access
  first, second = per_task[1] - per_task[0], per_task[2] - per_task[1]
  assert first > 0
  assert second == pytest.approx(first, rel=0.05)


def test_flops_come_from_the_compiled_program_where_lowered_counts_none(
    tmp_path, monkeypatch):
  """jax 0.11 on a GPU counts no FLOPs on the lowered program (an H200 run
  of `metarec bench` ended in "'NoneType' object is not subscriptable"):
  the compiled program's count stands in, and a backend counting neither
  gives a bench without utilization rather than a traceback."""
  import jax  # pylint: disable=g-import-not-at-top
  config = config_io.load_config_file(config_path("tiny"))
  exp = experiment.build(config, str(tmp_path))
  lowered_count = bench._counted_flops(config, str(tmp_path), exp, 16)  # pylint: disable=protected-access
  monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", lambda self: None)
  compiled_count = bench._counted_flops(config, str(tmp_path), exp, 16)  # pylint: disable=protected-access
  assert compiled_count == pytest.approx(lowered_count, rel=0.05)
  monkeypatch.setattr(jax.stages.Compiled, "cost_analysis", lambda self: None)
  assert bench._counted_flops(config, str(tmp_path), exp, 16) is None  # pylint: disable=protected-access
  result = bench.run(config, workdir=str(tmp_path), steps=1, warmup=1)
  assert result["step_flops"] is None and result["utilization"] is None
  assert result["device_tasks_per_sec"] > 0
  assert "FLOPs not counted by this backend" in bench.describe(result)


def test_bench_checks_the_data_before_it_creates_or_measures_anything(
    tmp_path, monkeypatch):
  """A missing `data.root` was found only after `bench` had created its
  work directory and timed the matmul peaks: the error came seconds late,
  after log lines, and left an empty folder behind."""
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top

  def measured(**kw):
    raise AssertionError("measured the matmul rate before checking the data")

  monkeypatch.setattr(bench, "peak_matmul_gflops", measured)
  config = config_io.apply_overrides(
      config_io.load_config_file(config_path("tiny")),
      [("data.name", "movielens-1m"), ("data.root", str(tmp_path / "none"))])
  workdir = tmp_path / "bench"
  with pytest.raises(InputError, match="data.root is not a folder"):
    bench.run(config, workdir=str(workdir), steps=1, warmup=0)
  assert not workdir.exists()
  # Nor a model axis the devices cannot form (it was refused after the
  # matmul peaks).
  config = config_io.apply_overrides(
      config_io.load_config_file(config_path("tiny")), [("mesh.model", 3)])
  with pytest.raises(InputError, match="mesh.model=3 must divide"):
    bench.run(config, workdir=str(workdir), steps=1, warmup=0)
  assert not workdir.exists()


def test_the_flop_count_does_not_depend_on_the_layout(tmp_path):
  """A shard's program times every device counted a `mesh.model` group's
  shared work once per device: idemb-large's step at mesh.model=4 counted
  3.1x its FLOPs at mesh.model=1 on one device, 1.1x at mesh.model=1 on 4
  (the replicated update, once per device)."""
  from test_mesh import tiny_idemb  # pylint: disable=g-import-not-at-top
  counts = []
  for model in (1, 2, 4):
    config = tiny_idemb()
    config.mesh.model = model
    exp = experiment.build(config, str(tmp_path))
    counts.append(bench._counted_flops(config, str(tmp_path), exp, 16))  # pylint: disable=protected-access
  assert counts[0] > 0
  assert counts[1] == pytest.approx(counts[0]) and counts[2] == counts[0]


def test_bench_learners_rounds_report_medians_of_paired_ratios(capsys,
                                                              monkeypatch):
  """`--rounds`: every learner measured each round, the order reversed in
  every other round, each ratio the median of the rounds' ratios (not the
  ratio of the medians: a load that changes between rounds moves both
  learners of a round)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from conftest import ROOT  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "bench_learners_tool", os.path.join(ROOT, "tools", "bench_learners.py"))
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  orders = []
  # Round by round, the machine slows down 2x, then 4x; b is 3x a, then 5x.
  rates = iter([{"a": 100.0, "b": 300.0}, {"a": 50.0, "b": 250.0},
                {"a": 25.0, "b": 75.0}])

  def fake_measure(config, algorithms, *, steps, warmup):
    del config, steps, warmup
    orders.append(list(algorithms))
    rate = next(rates)
    return {name: {k: 1.0 for k in tool._REPORTED}  # pylint: disable=protected-access
            | {"tasks_per_sec": rate[name],
               "device_tasks_per_sec": 2 * rate[name]}
            for name in algorithms}

  monkeypatch.setattr(tool, "measure", fake_measure)
  assert tool.main([f"--config={config_path('tiny')}", "--algorithms=a,b,a",
                    "--rounds=3"]) == 0
  assert orders == [["a", "b"], ["b", "a"], ["a", "b"]]
  out = capsys.readouterr().out
  result = json.loads(out.splitlines()[-1])
  assert result["b"]["x_first"] == 3.0  # median of 3, 5, 3
  assert result["b"]["tasks_per_sec"] == 250.0 and result["a"][
      "tasks_per_sec"] == 50.0
  assert result["rounds"][1] == {"a": 50.0, "b": 250.0}
  # s/step agrees with tasks/s and the batch (100 tasks: 100/s x 1 s).
  assert result["a"]["step_seconds"] * result["a"]["tasks_per_sec"] == (
      pytest.approx(100.0))
  assert "| b | 250 | 3.0 |" in out


def test_the_summary_says_what_a_one_pass_or_distilled_run_counts():
  """A metric learner's run said "0 inner steps, second order", and a
  distilled one did not say that its teacher's targets are outside the
  resident rate and the FLOPs (a helper's reading)."""
  from metarec_jax import bench  # pylint: disable=g-import-not-at-top
  workload = {"tasks_per_step": 256, "devices": 2, "backend": "cpu",
              "chunk_tasks": 16, "support_width": 32, "inner_steps": 0,
              "second_order": True, "compute_dtype": "float32",
              "distilled": True, "flops_per_task": 1e5,
              "plain_flops_per_task": None, "input_workers": 1}
  result = {"workload": workload, "tasks_per_sec": 2627.0,
            "device_tasks_per_sec": 13881.0, "step_seconds": 0.1,
            "achieved_gflops": 1.0, "peak_gflops": 60.0, "utilization": 0.02,
            "compile_seconds": 3.0, "input_wait_fraction": 0.0,
            "input_tasks_per_sec": 20000.0, "peak_rss_mb": 900.0}
  first = bench.describe(result).splitlines()[0]
  assert "no inner step (one pass)" in first and "order" not in first
  assert "distilled (the teacher's targets count in the tasks/s" in first
  workload.update(inner_steps=3, distilled=False)
  first = bench.describe(result).splitlines()[0]
  assert "3 inner steps, second order, float32" in first
  assert "distilled" not in first
