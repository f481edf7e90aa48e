"""End to end: the `metarec` command line on a tiny config."""

import json
import os
import subprocess
import sys

import pytest

from cli_run import assert_one_line_error, metarec, metarec_here
from conftest import config_path
from metarec_jax import cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  out = metarec("train", f"--config={config_path('tiny')}",
                f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr
  return workdir, out


def test_train_writes_the_work_directory(trained):
  workdir, out = trained
  assert out.stdout == ""  # logs go to stderr
  assert "step 6/6" in out.stderr
  # The last line says where the run is and what to run next.
  last = out.stderr.strip().splitlines()[-1]
  assert f"trained to step 6 in {workdir}" in last
  assert f"metarec eval --workdir={workdir}" in last
  with open(os.path.join(workdir, "config.json")) as f:
    record = json.load(f)
  assert record["config"]["train"]["num_steps"] == 6
  # eval.val_fraction 0 (automatic) is written as the share it resolved to.
  assert 0.1 <= record["config"]["eval"]["val_fraction"] <= 0.3
  assert record["versions"]["jax"]
  assert "git_revision" in record
  lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
  steps = [json.loads(l)["step"] for l in lines]
  # The first row is the validation of the start (eval_every_steps > 0).
  assert steps[0] == 0 and "val/mae" in json.loads(lines[0])
  assert 6 in steps and "train/loss" in json.loads(lines[1])
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert "6" in os.listdir(os.path.join(workdir, "checkpoints"))
  # Each validation says the new items' fewest counted ratings once: as
  # validated where its users rated new items, else with the prior; and
  # the fewest that count at all (`model.warm_min_support`).
  for step in (0, 3, 6):
    said = [l for l in out.stderr.splitlines() if f"step {step}  " in l]
    fitted = any("validated fewest support ratings of new items" in l
                 for l in said)
    assert len([l for l in said
                if "validated fewest support ratings that count" in l]) == 1
    none = any("no validation user rated a new item" in l and
               "count from the first" in l for l in said)
    assert fitted != none, said
    shares = [l for l in said if "validated shares" in l]
    assert len(shares) == 1 and (
        "as existing items'" in shares[0]) == none, said


def test_eval_prints_the_json_report_last(trained):
  workdir, _ = trained
  out = metarec("eval", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout.strip().splitlines()[-1])
  # The best validated checkpoint (tiny validates at steps 3 and 6), and
  # the log says which.
  assert report["step"] in (3, 6)
  assert (f"using the best validated checkpoint: step {report['step']}"
          in out.stderr)
  # ... and the validated shares it serves with (the anchored model).
  assert "of its learned part for existing items" in out.stderr
  # What it serves, in the JSON too (tiny: anchored, with the new-item
  # prior and minimum and the median map).
  served = report["served"]
  assert set(served) == {"share_existing_items", "share_new_items",
                         "cold_share_existing_items", "cold_share_new_items",
                         "new_item_prior", "new_item_min_support",
                         "warm_min_support",
                         "median_map_existing_items", "median_map_new_items"}
  assert 0.0 <= served["cold_share_new_items"] <= 1.0
  assert "a user without ratings is served" in out.stderr
  assert 0.0 <= served["share_new_items"] <= 1.0
  assert served["new_item_min_support"] in (1.0, 2.0, 3.0)
  assert served["warm_min_support"] in (1.0, 2.0, 3.0)
  assert isinstance(served["median_map_new_items"], bool)
  assert isinstance(report["warnings"], list)
  assert set(report["scenarios"]) == {"W", "UC", "IC", "UIC"}
  uc = report["scenarios"]["UC"]
  assert uc["tasks"] > 0
  for key in ("mae", "rmse", "ndcg@1", "ndcg@3", "mae_unadapted"):
    assert isinstance(uc[key], float)
  assert set(uc["baselines"]) == {"global_mean", "item_mean_user_bias"}
  assert "NaN" not in out.stdout
  with open(os.path.join(workdir, "eval", "support_curve.json")) as f:
    curve = json.load(f)
  assert curve["step"] == report["step"]
  assert set(curve["scenarios"]) == {"W", "UC", "IC", "UIC"}
  assert curve["scenarios"]["UC"]["k"][:2] == [1, 2]


@pytest.mark.parametrize("args, message", [
    (["train", "--workdir=/tmp/x", "--bogus=1"], "Unknown command line flag"),
    (["train", f"--config={config_path('tiny')}", "--workdir=/tmp/x",
      "--config.train.nosuch=1"], "unknown config key 'train.nosuch'"),
    # An open section's key still needs a name (it was accepted, and written
    # into the run's config).
    (["train", f"--config={config_path('tiny')}", "--workdir=/tmp/x",
      "--config.data.list_pad.=3"], "unknown config key 'data.list_pad.'"),
    (["train", f"--config={config_path('tiny')}", "--workdir=/tmp/x",
      "--config.train.num_steps=many"], "expected an integer"),
    (["train", "--config=configs/missing.py", "--workdir=/tmp/x"],
     "no such config file"),
    (["eval", "--workdir=/nonexistent"], "not a metarec work directory"),
    (["frobnicate"], "unknown command"),
])
def test_bad_input_is_one_line_with_status_2(args, message, tmp_path):
  # A work directory of this test's own: a file at /tmp/x, left by
  # anything else on the machine, was the first error instead.
  out = metarec(*(a.replace("/tmp/x", str(tmp_path / "x")) for a in args))
  assert out.returncode == 2
  assert message in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1
  assert "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    # absl's own words were Python's: "('Non-boolean argument to boolean
    # flag', 'maybe')", "invalid literal for int() with base 10: 'abc'".
    (["eval", "--workdir=W", "--support_curve=maybe"],
     "--support_curve: expected true or false, got 'maybe'"),
    (["eval", "--workdir=W", "--step=abc"],
     "--step: expected an integer, got 'abc'"),
    (["eval", "--workdir=W", "--step=-1"], "-1 is not a non-negative"),
    # A path that is not UTF-8 (legal on Linux): a traceback from
    # TensorBoard after the store was built.
    (["train", f"--config={config_path('tiny')}", "--workdir=W\udcff"],
     "--workdir: not a UTF-8 path (byte 0xff at"),
    # absl raised a ValueError: a traceback, exit 1.
    (["eval", "--workdir=W", "--nosupport_curve=false"],
     "--nosupport_curve=false does not take an argument"),
])
def test_a_flag_of_another_type_or_a_bad_path_is_named(args, message,
                                                      tmp_path):
  out = metarec_here(*(a.replace("W", str(tmp_path / "w")) for a in args))
  assert_one_line_error(out, message)
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("flags, message", [
    # JAX raised a traceback (exit 1) for each of these.
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2",
      "--process_id=2"], "--process_id=2 must be 0 to --num_processes-1"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=0",
      "--process_id=0"], "--num_processes=0 must be at least 1"),
    (["--num_processes=2"], "needs --coordinator_address=HOST:PORT,"
     " --num_processes=N and --process_id=I together (got only"
     " --num_processes)"),
    (["--coordinator_address=nohostcolon", "--num_processes=2",
      "--process_id=0"], "--coordinator_address='nohostcolon' must be"
     " HOST:PORT"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2",
      "--process_id=0", "--join_timeout=0"],
     "--join_timeout=0 must be at least 1 (seconds)"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2",
      "--process_id=0", "--peer_timeout=nan"],
     "--peer_timeout=nan must be at least 2 (seconds)"),
])
def test_multi_process_flags_that_cannot_describe_a_run(tmp_path, flags,
                                                         message):
  out = metarec_here("train", f"--config={config_path('tiny')}",
                     f"--workdir={tmp_path / 'w'}", *flags)
  assert_one_line_error(out, message)
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("flag, message", [
    ("--steps=0", "flag --steps=0: 0 is not a positive integer"),
    ("--warmup=-1", "flag --warmup=-1: -1 is not a non-negative integer"),
])
def test_bench_refuses_steps_it_cannot_time(flag, message):
  assert_one_line_error(
      metarec_here("bench", f"--config={config_path('tiny')}", flag), message)


@pytest.mark.parametrize("args", [
    ["eval", "--workdir=/nonexistent"],
    ["export", "--workdir=/nonexistent", "--ratings=/nonexistent.csv",
     "--out=/nonexistent-out"],
])
def test_a_negative_step_is_refused_before_anything_is_read(args):
  """export read the store and the whole --ratings file before the
  checkpoint lookup refused --step=-3."""
  assert_one_line_error(metarec_here(*args, "--step=-3"),
                        "flag --step=-3: -3 is not a non-negative integer")


TINY = f"--config={config_path('tiny')}"


@pytest.mark.parametrize("args, message", [
    # Each of these was a traceback or exit 1 naming a later symptom (a
    # CLI sweep): an int beyond 32 bits passed the checks; a file in place
    # of --workdir; a config.json given as --config; a negative seed.
    ([TINY, "--config.train.seed=9223372036854775808"],
     "config key train.seed=9223372036854775808: must be an integer >= 0"
     " and at most 2,147,483,647"),
    ([TINY, "--config.train.num_steps=3000000000"],
     "train.num_steps=3000000000: must be an integer >= 1 and at most"),
    ([TINY, "--workdir={file}"], "--workdir: {file} is a file, not a folder"),
    ([TINY, "--workdir={file}/sub"],
     "--workdir: {file} is a file, not a folder"),
    (["--config={file}"], "{file}: not a Python config file (a .py file"
     " defining get_config())"),
])
def test_bad_train_input_is_named_before_anything_is_written(
    tmp_path, args, message):
  file = str(tmp_path / "config.json")
  with open(file, "w") as f:
    f.write("{}")
  args = [a.format(file=file) for a in args]
  if not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={tmp_path}/run")
  assert_one_line_error(metarec_here("train", *args),
                        message.format(file=file))
  assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_eval_refuses_a_config_file_it_would_ignore(tmp_path):
  (tmp_path / "config.json").write_text("{}")  # never read
  assert_one_line_error(
      metarec_here("eval", f"--workdir={tmp_path}", "--config=other.py"),
      "--config: eval reads the work directory's config; use"
      " --config.KEY=VALUE to override keys")


def test_synth_refuses_a_negative_seed(tmp_path):
  assert_one_line_error(
      metarec_here("data", "synth", f"--out={tmp_path}/s", "--num_users=5",
                   "--seed=-1"), "--seed must be >= 0, got -1")
  assert not os.listdir(tmp_path)


def test_help_explains_itself():
  out = metarec("--help")
  assert out.returncode == 0 and "train" in out.stdout and "eval" in out.stdout
  assert "plot" in out.stdout
  out = metarec("train", "--help")
  assert out.returncode == 0 and "--workdir" in out.stdout
  assert "--config.KEY=VALUE" in out.stdout


def test_help_gives_each_flags_default_once():
  """`--support_curve: Also write ...` read as opt-in: it is on unless
  --nosupport_curve, and no --help said so (nor any other default)."""
  out = metarec_here("eval", "--help")
  lines = {l.split(":")[0].strip(): l for l in out.stdout.splitlines()}
  assert lines["--support_curve"].endswith(
      "(default: true; --nosupport_curve turns it off)")
  assert "(default: the best validated one" in lines["--step"]
  assert lines["--step"].count("(default") == 1  # its help says it
  out = metarec_here("serve", "--help")
  lines = {l.split(":")[0].strip(): l for l in out.stdout.splitlines()}
  assert lines["--max_k"].endswith("(default: 100)")
  assert lines["--access_log"].endswith("(default: false)")
  assert "(default" not in lines["--export"]  # required: no default



def test_readers_help_shows_no_config_file_flag():
  """`eval` and `export` refuse --config=FILE (they read the work
  directory's): their help listed it, with a train key as the example."""
  for command, example in (("eval", "eval.batch_tasks"),
                           ("export", "data.max_support")):
    out = metarec(command, "--help")
    assert out.returncode == 0
    assert "--config:" not in out.stdout
    assert f"--config.{example}=" in out.stdout
  assert "--config:" in metarec("train", "--help").stdout


def test_config_given_with_a_space_says_to_write_an_equals_sign():
  out = metarec("train", "--config", config_path("tiny"), "--workdir=x")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].endswith(
      "--config: write --config=FILE, with '='")


@pytest.mark.parametrize("command, message", [
    ("eval", "eval reads the work directory's config"),
    ("serve", "metarec serve takes no --config flags")])
def test_config_with_a_space_to_a_command_without_config_files(command,
                                                               message):
  # "write --config=FILE", which the command then refused as well; with the
  # file after the space, eval named the file an "unexpected argument".
  for words in (["--config"], ["--config", config_path("tiny")]):
    out = metarec(command, *words, "--workdir=x")
    assert out.returncode == 2
    assert message in out.stderr.strip().splitlines()[-1]


def test_export_line_counts_repeated_ratings_only_when_there_are_some():
  summary = {"users": 300, "out": "ex", "seconds": 2.04, "dtype": "float32",
             "bytes_per_user": 1234.0, "flagged_users": 0,
             "skipped_users": 0, "skipped_items": 0,
             "duplicate_ratings": 3000}
  line = cli.export_line(summary)
  assert line.startswith("exported 300 users to ex in 2.0 s (float32,"
                         " 1,234 bytes per user); 0 flagged")
  assert line.endswith(", 3,000 repeated (user, item) ratings dropped (the"
                       " latest of each kept)")
  assert "repeated" not in cli.export_line({**summary,
                                            "duplicate_ratings": 0})


def test_an_early_stop_names_the_checkpoint_that_is_its_result(
    tmp_path, monkeypatch):
  """An early-stopped run ended "trained to step 260" without a word that
  eval and export use its best validated checkpoint, step 200."""
  import metarec_jax.train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(metarec_jax.train, "train_and_evaluate",
                      lambda config, workdir: {
                          "step": 260, "early_stopped": True, "lead": True,
                          "best": {"step": 200, "val": {"tasks": 100}}})
  out = metarec_here("train", f"--config={config_path('tiny')}",
                     f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 0, out.stderr
  assert ("trained to step 260 (its best validated checkpoint, which eval"
          " and export use: step 200) in") in out.stderr


def test_trains_order_warning_gives_the_0_1_tip_only_on_a_0_1_scale(
    tmp_path, monkeypatch):
  """A run on ratings 1-5 (helper T: 0.5-5) was told to try implicit
  feedback "for like/dislike (0/1) ratings", which eval left out."""
  import metarec_jax.train  # pylint: disable=g-import-not-at-top
  val = {"tasks": 100, "mae": 0.7, "ndcg@3": 0.5, "baselines": {
      "item_mean_user_bias": {"mae": 0.8, "ndcg@3": 0.75}}}
  for scale, tip in (((1.0, 5.0), False), ((0.0, 1.0), True)):
    monkeypatch.setattr(metarec_jax.train, "train_and_evaluate",
                        lambda config, workdir, scale=scale: {
                            "step": 10, "lead": True, "rating_range": scale,
                            "best": {"step": 10, "val": val}})
    out = metarec_here("train", f"--config={config_path('tiny')}",
                       f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 0, out.stderr
    assert "validation: the model orders the query items WORSE" in out.stderr
    assert ("like/dislike (0/1)" in out.stderr) == tip


def test_trains_summary_warns_where_its_support_curve_loses(
    tmp_path, monkeypatch):
  """The validation support curve that train writes at its end can lose to
  the baseline at one or two support ratings while the full support wins:
  eval warned of it, train's summary did not."""
  import metarec_jax.train  # pylint: disable=g-import-not-at-top
  val = {"tasks": 100, "mae": 0.7, "ndcg@3": 0.8, "baselines": {
      "item_mean_user_bias": {"mae": 0.8, "ndcg@3": 0.75}}}

  def curve(mae_at_1):
    return {"step": 10, "scenarios": {"val": {
        "k": [1, 2, 4], "tasks": [80, 80, 80], "mae": [mae_at_1, 0.78, 0.7],
        "item_mean_user_bias": [0.8, 0.79, 0.78],
        "mae_gap_se": [0.01, 0.01, 0.01]}}}

  for mae_at_1, warned in ((0.9, True), (0.79, False)):
    monkeypatch.setattr(metarec_jax.train, "train_and_evaluate",
                        lambda config, workdir, m=mae_at_1: {
                            "step": 10, "lead": True, "curve": curve(m),
                            "best": {"step": 10, "val": val}})
    out = metarec_here("train", f"--config={config_path('tiny')}",
                       f"--workdir={tmp_path / 'w'}")
    assert out.returncode == 0, out.stderr
    assert ("validation: cut to 1 support rating(s), the model's query MAE"
            " is WORSE" in out.stderr) == warned, out.stderr
    assert "orders the query items WORSE" not in out.stderr


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize("args", [["--help"], ["train", "--help"]])
def test_a_reader_that_stops_reading_ends_the_command_quietly(args,
                                                              unbuffered):
  """`metarec --help | head -1`: stdout's reader is gone before the help
  is written; the command ends as SIGPIPE would end it (141), with no
  traceback and no "Exception ignored" line, whether Python buffers the
  pipe (its usual way: the write happens at the last flush) or not
  (PYTHONUNBUFFERED)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
  if unbuffered:
    env["PYTHONUNBUFFERED"] = "1"
  proc = subprocess.Popen([sys.executable, "-m", "metarec_jax.cli", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env)
  proc.stdout.close()  # long before the interpreter has started
  err = proc.stderr.read().decode()
  assert proc.wait() == 141, err
  assert err == ""


@pytest.mark.parametrize("args, named", [
    (["eval", "--workdir=~/no_run"], "no_run"),
    (["data", "inspect", "--store=~/no_store"], "no_store"),
    (["eval", "--workdir=~/no_run", "--ratings=~/r.csv"], "no_run"),
])
def test_a_path_flag_starting_with_a_tilde_means_the_home_folder(
    args, named, tmp_path, monkeypatch):
  """The shell expands no `~` after `--flag=`: `--workdir=~/run` made a
  folder named `~` in the current one, which a later `rm -rf ~` takes for
  the home folder."""
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.chdir(tmp_path)
  out = metarec_here(*args)
  assert out.returncode == 2
  assert f"{tmp_path}/home/{named}" in out.stderr, out.stderr
  assert not os.path.exists(tmp_path / "~")


def test_config_files_and_path_keys_starting_with_a_tilde_are_expanded(
    monkeypatch):
  from metarec_jax import cli_spec  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("HOME", "/h")
  config, overrides, rest = cli_spec.split_config_args([
      "--config=~/c.py", "--config.data.root=~/ml-1m",
      "--config.distill.teacher=~/maml", "--config.data.store=~x/s",
      "--config.data.generic.user_col=~u", "--workdir=~/w"])
  assert config == "/h/c.py"
  assert dict(overrides) == {
      "data.root": "/h/ml-1m", "distill.teacher": "/h/maml",
      "data.store": os.path.expanduser("~x/s"),
      "data.generic.user_col": "~u"}  # not a path: as written
  assert rest == ["--workdir=~/w"]  # expanded once parsed (the flags)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("unbuffered", [False, True])
def test_stdout_on_a_full_disk_is_one_line(unbuffered):
  """`metarec --help > /dev/full`: the write failed at the last flush,
  Python's exit ("Exception ignored ... OSError", status 120), or
  unbuffered inside the help's print (a traceback)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
  if unbuffered:
    env["PYTHONUNBUFFERED"] = "1"
  with open("/dev/full", "w") as full:
    out = subprocess.run([sys.executable, "-m", "metarec_jax.cli", "--help"],
                         stdout=full, stderr=subprocess.PIPE, text=True,
                         env=env, timeout=120)
  assert out.returncode == 1
  assert out.stderr == ("metarec: error: cannot write the output: No space"
                        " left on device\n")


def test_a_closed_stdout_is_no_traceback():
  """Started with stdout closed (`metarec --help >&-`) Python has no
  sys.stdout, and the last flush raised AttributeError."""
  out = subprocess.run([sys.executable, "-c", "import os, sys; os.close(1);"
                        " os.execv(sys.executable, [sys.executable, '-m',"
                        " 'metarec_jax.cli', '--help'])"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=120)
  assert "Traceback" not in out.stderr, out.stderr
