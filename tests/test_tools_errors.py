"""tools/ scripts follow the command line's error convention
(`metarec_jax.toolkit`): a bad flag or a missing input is one line naming
the problem, exit status 2, no traceback."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from procs import env_with


@pytest.mark.parametrize("args, message", [
    (["bench_parse.py", "--rows=abc"], "--rows=abc: a positive integer"),
    (["bench_parse.py", "--bogus"], "unknown argument '--bogus'"),
    (["profile_step.py", "--steps=0"], "--steps=0: a positive integer"),
    # Tracebacks before: a missing --config, a README path or markers.
    (["profile_step.py", "--steps=2"], "--config=FILE is required"),
    (["config_reference.py", "--write", "--readme=OUT"],
     "out: No such file or directory"),
    (["config_reference.py", "--write", "--readme=FILE"],
     "file: no <!-- config-reference:start -->"),
    (["share_curve.py", "/nonexistent"], "/nonexistent: no config.json"),
    (["share_curve.py", "/nonexistent", "--shares=0,nan"],
     "--shares=0,nan: comma-separated finite numbers"),
    (["testbed.py", "--out=OUT", "--seed=-1"], "argument --seed: -1 is not"),
    (["testbed.py", "--out=OUT", "--ratings_only=/nonexistent"],
     "/nonexistent/flags.txt: No such file or directory"),
    (["ml100k_subset.py", "--src=/nonexistent", "--out=OUT"],
     "/nonexistent/ratings.dat: No such file or directory"),
    (["ml100k_subset.py", "--src=OUT", "--out=OUT/sub"],
     "out/sub is inside --src="),
    (["ndcg_ceiling.py", "--workdir=/x", "--tasks=/x", "--k=0"],
     "argument --k: 0 is not >= 1"),
    (["ndcg_ceiling.py", "--workdir=/x", "--tasks=/x", "--mf_dim=0"],
     "argument --mf_dim: 0 is not >= 1"),
    (["ndcg_ceiling.py", "--workdir=/x", "--tasks=/x", "--mf_reg=nan"],
     "argument --mf_reg: "),  # printed "mae": NaN, no JSON (helper B)
    (["ndcg_ceiling.py", "--workdir=/x", "--tasks=/x", "--mf_iters=0"],
     "argument --mf_iters: 0 is not >= 1"),
    (["ndcg_ceiling.py", "--workdir=/x", "--tasks=/x", "--mae=0.7,-1"],
     "--mae=0.7,-1: comma-separated numbers >= 0"),
    (["bench_implicit.py", "--losses=bogus"], "'bogus' is not one of"),
    (["bench_implicit.py", "--config=configs/tiny.py", "--losses=bce",
      "--steps=1", "--warmup=-1"], "argument --warmup: -1 is not >= 0"),
    (["bench_serve.py", "--export=/x", "--phases=bogus"],
     "--phases: unknown bogus"),
    (["bench_serve.py", "--bogus=1"], "Unknown command line flag 'bogus'"),
    (["bench_learners.py", "--config=configs/tiny.py", "--algorithms=maml",
      "--steps=1", "--warmup=-1"], "--warmup=-1: -1 is not"),
    # Tracebacks before (helper B): no learner; an override without '='.
    (["bench_learners.py", "--config=configs/tiny.py", "--algorithms="],
     "--algorithms: name at least one meta.algorithm"),
    (["bench_learners.py", "--config=configs/tiny.py",
      "--config.train.tasks_per_step"], "expected --config.KEY=VALUE"),
    (["bench_learners.py", "--config=configs/tiny.py",
      "--config.train.tasks_per_step=0"], "train.tasks_per_step=0: must be"),
    (["bench_export.py", "--dir=FILE", "--users=10", "--items=5"],
     "file: not a folder"),
    (["device_bench.py", "--quick", "--budget=-1"],
     "argument --budget: -1 is not > 0"),
    (["median_map_effect.py", "/x@abc"], "/x@abc: the step after '@'"),
    (["new_item_prior_effect.py", "/x@abc"], "/x@abc: the step after '@'"),
    (["share_curve.py", "/x@last"], "/x@last: the step after '@'"),
])
def test_bad_flags_and_missing_inputs_are_one_line(tmp_path, args, message):
  (tmp_path / "file").write_text("")
  args = [a.replace("OUT", str(tmp_path / "out"))
          .replace("FILE", str(tmp_path / "file")) for a in args]
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", args[0]),
                        *args[1:]], capture_output=True, text=True, cwd=ROOT,
                       env=env_with(), timeout=300)
  assert out.returncode == 2, (out.stdout, out.stderr)
  assert "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{args[0]}: error: ") and message in last, last


@pytest.mark.parametrize("tool, flag", [
    ("bench_learners.py", "--algorithms"), ("bench_serve.py", "--clients"),
    ("profile_step.py", "--steps"), ("bench_parse.py", "--rows"),
    ("bench_export.py", "--users")])
def test_help_prints_the_usage(tool, flag):
  """Four tools refused --help as an unknown flag or argument (status 2);
  two listed their flags nowhere but in the source."""
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool),
                        "--help"], capture_output=True, text=True, cwd=ROOT,
                       env=env_with(), timeout=300)
  assert out.returncode == 0, out.stderr
  assert flag in out.stdout, out.stdout


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path):
  """testbed.py --out=DIR where DIR/SHAPE is a file: one line naming it."""
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  (out_dir / "taste").write_text("")
  out = subprocess.run([sys.executable, os.path.join(ROOT, "tools",
                                                     "testbed.py"),
                        f"--out={out_dir}", "--shape=taste"],
                       capture_output=True, text=True, cwd=ROOT,
                       env=env_with(), timeout=300)
  assert out.returncode == 2, (out.stdout, out.stderr)
  assert "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last == (f"testbed.py: error: {out_dir / 'taste'}: a folder this"
                  " tool did not write (no flags.txt); choose another --out"
                  ), last


def test_a_write_that_fails_is_one_line_and_status_1(monkeypatch, capsys):
  """`toolkit.run`: an `OutputError` (a full disk) is one line, status 1,
  as for `metarec`, not a traceback."""
  from metarec_jax import toolkit
  from metarec_jax.errors import OutputError

  def main():
    raise OutputError("/out/a.csv", "No space left on device")

  monkeypatch.setattr(sys, "argv", ["tool.py"])
  with pytest.raises(SystemExit) as stop:
    toolkit.run(main)
  assert stop.value.code == 1
  assert capsys.readouterr().err == (
      "tool.py: error: cannot write /out/a.csv: No space left on device\n")


def test_bench_export_trains_under_dir_and_anew_for_other_sizes(
    tmp_path, monkeypatch):
  """A relative --dir: the tool made it in the caller's folder but ran
  `metarec train` from the repository, which trained there; and a work
  directory keyed on --users alone was reused for other sizes, reporting
  the earlier model's figures."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "bench_export", os.path.join(ROOT, "tools", "bench_export.py"))
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  asked = []

  def metarec(*args):
    asked.append(args)
    raise tool.InputError("stopped here")

  monkeypatch.setattr(tool, "_metarec", metarec)
  monkeypatch.chdir(tmp_path)
  for hidden in ("64,64", "8"):
    assert tool.main(["--dir=rel", "--users=5", f"--hidden={hidden}"]) == 2
  workdirs = [a for args in asked for a in args if a.startswith("--workdir=")]
  assert len(workdirs) == 2 and workdirs[0] != workdirs[1]
  for flag in workdirs:
    assert flag.startswith(f"--workdir={tmp_path / 'rel'}/work-5u-"), flag
