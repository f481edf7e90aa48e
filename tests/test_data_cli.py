"""`metarec data prepare|synth|inspect` and bad data files, through the CLI."""

import hashlib
import os

import pytest

import datafiles
from cli_run import assert_one_line_error, last_json, metarec
from conftest import config_path


def no_store_left(parent, name="store"):
  """Nothing of a failed store build remains: no folder, no temp folder."""
  return not [e for e in os.listdir(parent) if e == name or
              e.startswith(f".{name}.tmp-")]


def test_prepare_then_inspect(tmp_path):
  root = datafiles.tiny_ml1m(str(tmp_path / "ml"))
  out = metarec("data", "prepare", "--dataset=movielens-1m", f"--root={root}",
                f"--out={tmp_path / 'store'}")
  assert out.returncode == 0, out.stderr
  report = last_json(out)
  assert (report["users"], report["items"], report["ratings"]) == (3, 3, 4)
  out = metarec("data", "inspect", f"--store={tmp_path / 'store'}")
  assert out.returncode == 0, out.stderr
  report = last_json(out)
  assert report["dataset"] == "movielens-1m"
  assert report["users_with_ratings"] == 2
  assert report["rating_mean"] == pytest.approx((5 + 3 + 1 + 2) / 4)
  assert report["ratings_per_user"]["q0"] == 1.0
  assert report["ratings_per_user"]["q100"] == 3.0
  assert report["new_item_share"] == pytest.approx(1 / 3)
  assert {f["name"]: f["vocab"] for f in report["features"]}["gender"] == 3
  assert "movielens-1m task store" in out.stdout
  assert "director" in out.stdout
  # The input files it was built from, as a resume compares them.
  ratings = open(os.path.join(root, "ratings.dat"), "rb").read()
  assert report["source_files"]["ratings.dat"] == {
      "bytes": len(ratings), "sha256": hashlib.sha256(ratings).hexdigest()}
  assert {"users.dat", "movies.dat"} <= set(report["source_files"])
  assert (f"built from ratings.dat: {len(ratings):,} bytes, SHA-256"
          f" {hashlib.sha256(ratings).hexdigest()[:16]}...") in out.stdout
  # Prepared again over it: said, not done in silence (helper D).
  out = metarec("data", "prepare", "--dataset=movielens-1m", f"--root={root}",
                f"--out={tmp_path / 'store'}")
  assert out.returncode == 0, out.stderr
  assert f"replaced the earlier task store at {tmp_path / 'store'}" in (
      out.stderr)


def test_prepare_from_a_config_with_overrides(tmp_path):
  root = datafiles.tiny_ml100k(str(tmp_path / "ml"))
  out = metarec("data", "prepare", f"--config={config_path('melu_ml100k')}",
                f"--config.data.root={root}", "--config.data.list_pad.genre=2",
                f"--out={tmp_path / 'store'}")
  assert out.returncode == 0, out.stderr
  report = last_json(out)
  assert report["dataset"] == "movielens-100k" and report["users"] == 30
  assert {f["name"]: f["max_len"] for f in report["features"]}["genre"] == 2


def test_synth_builds_a_synthetic_store(tmp_path):
  out = metarec("data", "synth", f"--out={tmp_path / 's'}",
                "--num_users=300", "--num_items=50", "--seed=2")
  assert out.returncode == 0, out.stderr
  report = last_json(out)
  assert (report["dataset"], report["users"], report["items"]) == (
      "synthetic", 300, 50)


@pytest.mark.parametrize("args, message", [
    (["data"], "expected one action"),
    (["data", "fetch", "--store=x"], "--store does not apply"),
    (["data", "inspect", "--config=configs/default.py", "--store=x"],
     "takes no --config"),
    (["data", "synth", "--out=/tmp/x"], "--num_users is required"),
    (["data", "synth", "--out=/tmp/x", "--num_users=5", "--num_items=10"],
     "--min_ratings=20 must not exceed --num_items=10 (a user rates"),
    (["data", "inspect", "--store=/nonexistent"], "not a task store"),
    (["data", "prepare", "--dataset=netflix", "--root=/tmp", "--out=/tmp/x"],
     "data.name must be one of"),
])
def test_bad_data_command_lines(args, message):
  assert_one_line_error(metarec(*args), message)


def _replace(path, old, new):
  data = open(path, "rb").read()
  assert old in data
  with open(path, "wb") as f:
    f.write(data.replace(old, new))


# (file, bytes to replace, replacement, expected message)
BAD_ML1M = {
    "malformed_line": ("ratings.dat", b"3::10::2::50", b"3::10",
                       "ratings.dat:3: 2 field(s) separated by '::'"),
    "non_numeric_user": ("users.dat", b"1::F", b"one::F",
                         "users.dat:2: user id 'one' is not an integer"),
    "non_numeric_movie": ("ratings.dat", b"3::10::", b"3::1O::",
                          "ratings.dat:3: item id '1O' is not an integer"),
    "rating_off_scale": ("ratings.dat", b"1::30::3", b"1::30::7",
                         "ratings.dat:4: rating 7 is not a whole-number"
                         " rating on the scale 1 to 5"),
    "unknown_user": ("ratings.dat", b"3::10::2", b"9::10::2",
                     "ratings.dat:3: unknown user 9 (not in users.dat)"),
    "unknown_movie": ("ratings.dat", b"1::30::3", b"1::31::3",
                      "ratings.dat:4: unknown movie 31 (not in movies.dat)"),
    "empty_file": ("users.dat", None, b"", "users.dat: empty file"),
    "latin1_in_utf8": ("movies_extrainfos.dat", "Caf\u00e9".encode(),
                       b"Caf\xe9", "movies_extrainfos.dat:2: byte 0xe9 at"
                                   " column 8 is not valid utf-8 text"),
    "title_without_year": ("movies.dat", b"Old Film (1950)", b"Old Film",
                           "movies.dat:3: title 'Old Film' does not end"
                           " with the (year)"),
}


@pytest.mark.parametrize("case", sorted(BAD_ML1M))
def test_bad_movielens_files_fail_prepare_cleanly(case, tmp_path):
  root = datafiles.tiny_ml1m(str(tmp_path / "ml"))
  name, old, new, message = BAD_ML1M[case]
  if old is None:
    open(os.path.join(root, name), "wb").close()
  else:
    _replace(os.path.join(root, name), old, new)
  out = metarec("data", "prepare", "--dataset=movielens-1m", f"--root={root}",
                f"--out={tmp_path / 'store'}")
  assert_one_line_error(out, message)
  assert no_store_left(tmp_path)


def test_a_missing_file_fails_prepare_cleanly(tmp_path):
  root = datafiles.tiny_ml1m(str(tmp_path / "ml"))
  os.remove(os.path.join(root, "ratings.dat"))
  out = metarec("data", "prepare", "--dataset=movielens-1m", f"--root={root}",
                f"--out={tmp_path / 'store'}")
  assert_one_line_error(out, "ratings.dat: no such file")
  assert no_store_left(tmp_path)


def test_bad_movielens_100k_files_fail_prepare_cleanly(tmp_path):
  root = datafiles.tiny_ml100k(str(tmp_path / "ml"))
  _replace(os.path.join(root, "u.item"), b"|0|0|1|0|0\n", b"|0|0|2|0|0\n")
  out = metarec("data", "prepare", "--dataset=movielens-100k",
                f"--root={root}", f"--out={tmp_path / 'store'}")
  assert_one_line_error(out, "genre flag '2' of Comedy is not 0 or 1")
  assert "u.item:" in out.stderr
  assert no_store_left(tmp_path)


def test_a_previous_store_survives_a_failed_rebuild(tmp_path):
  root = datafiles.tiny_ml1m(str(tmp_path / "ml"))
  store = tmp_path / "store"
  args = ("data", "prepare", "--dataset=movielens-1m", f"--root={root}",
          f"--out={store}")
  assert metarec(*args).returncode == 0
  before = open(store / "manifest.json").read()
  _replace(os.path.join(root, "ratings.dat"), b"1::10::5", b"1::10::9")
  assert_one_line_error(metarec(*args), "rating 9")
  assert open(store / "manifest.json").read() == before
  assert sorted(os.listdir(tmp_path)) == ["ml", "store"]


@pytest.mark.parametrize("case", ["malformed_line", "latin1_in_utf8"])
def test_bad_files_fail_train_cleanly(case, tmp_path):
  root = datafiles.tiny_ml1m(str(tmp_path / "ml"))
  name, old, new, message = BAD_ML1M[case]
  _replace(os.path.join(root, name), old, new)
  workdir = tmp_path / "work"
  out = metarec("train", f"--config={config_path('tiny')}",
                f"--workdir={workdir}", "--config.data.name=movielens-1m",
                f"--config.data.root={root}")
  assert_one_line_error(out, message)
  # Nothing was written there: the work directory the start made is gone.
  assert sorted(os.listdir(tmp_path)) == ["ml"]


def test_prepare_and_synth_never_replace_a_folder_that_is_no_store(tmp_path):
  """`--out` naming the data's own folder (or any file or folder that is
  not an earlier store) is refused before anything is read or written."""
  root = datafiles.tiny_ml1m(str(tmp_path / "ml"))
  before = sorted(os.listdir(root))
  out = metarec("data", "prepare", "--dataset=movielens-1m", f"--root={root}",
                f"--out={root}")
  assert_one_line_error(out, f"{root}: exists and is not a task store; a"
                        " store needs a folder of its own: move that away,"
                        " or choose another (`data`'s --out, or `data.store`"
                        " for `train`)")
  assert sorted(os.listdir(root)) == before
  assert sorted(os.listdir(tmp_path)) == ["ml"]  # no temporary folder
  notes = tmp_path / "notes.txt"
  notes.write_text("keep")
  out = metarec("data", "synth", f"--out={notes}", "--num_users=5")
  assert_one_line_error(out, "exists and is not a task store")
  assert notes.read_text() == "keep"
  export_like = tmp_path / "export"  # a manifest with a "format" too
  export_like.mkdir()
  (export_like / "manifest.json").write_text('{"format": "metarec-export"}')
  out = metarec("data", "synth", f"--out={export_like}", "--num_users=5")
  assert_one_line_error(out, "exists and is not a task store")
  assert sorted(os.listdir(export_like)) == ["manifest.json"]
  # An empty folder, and an earlier store, are written over.
  (tmp_path / "empty").mkdir()
  for target in ("empty", "empty"):
    out = metarec("data", "synth", f"--out={tmp_path / target}",
                  "--num_users=5")
    assert out.returncode == 0, out.stderr


def test_prepare_refuses_an_out_below_a_file_before_reading(tmp_path):
  """A file on the way to `--out` (`ml/ratings.dat/store`) is one line
  and exit 2 before the data is read; it was "File exists", exit 1."""
  root = datafiles.tiny_ml1m(str(tmp_path / "ml"))
  inside = os.path.join(root, "ratings.dat")
  for out in (os.path.join(inside, "store"),
              os.path.join(inside, "deeper", "store")):
    run = metarec("data", "prepare", "--dataset=movielens-1m",
                  f"--root={root}", f"--out={out}")
    assert_one_line_error(run, f"{inside} is a file, not a folder")
    assert "wrote" not in run.stderr  # refused before the data was read
  run = metarec("data", "synth", f"--out={inside}/s", "--num_users=5")
  assert_one_line_error(run, f"{inside} is a file, not a folder")


@pytest.mark.parametrize("flag, message", [
    # was "{root}/ratings.csv: no such file": nothing said which key names it
    (None, "/ratings.csv: no such file (data.generic.ratings='ratings.csv'"),
    ("--config.data.generic.item_features=items.csv",
     "/items.csv: no such file (data.generic.item_features='items.csv'"),
    # was "data.root is not a folder", the file being the right one
    ("ROOT_IS_FILE", "stars.csv: data.root is a file, not a folder: give its"
     " folder as data.root and its name as data.generic.ratings"),
])
def test_a_misnamed_generic_file_names_the_key_to_set(flag, message,
                                                      tmp_path):
  root = tmp_path / "shop"
  root.mkdir()
  (root / "stars.csv").write_text("user,item,rating\nu1,i1,4\n")
  args = [f"--config={config_path('tiny')}", "--config.data.name=generic",
          f"--config.data.root={root}", f"--out={tmp_path / 'store'}"]
  if flag == "ROOT_IS_FILE":
    args[2] = f"--config.data.root={root / 'stars.csv'}"
  elif flag:
    args += [flag, "--config.data.generic.ratings=stars.csv"]
  out = metarec("data", "prepare", *args)
  assert_one_line_error(out, message)
  assert no_store_left(tmp_path)


def test_train_of_a_misnamed_generic_file_creates_no_work_directory(
    tmp_path):
  """The check ran while building the store: after the new work directory
  and its train.lock were made, and they were left behind."""
  root = tmp_path / "shop"
  root.mkdir()
  (root / "stars.csv").write_text("user,item,rating\nu1,i1,4\n")
  out = metarec("train", f"--config={config_path('tiny')}",
                "--config.data.name=generic", f"--config.data.root={root}",
                f"--workdir={tmp_path / 'run'}")
  assert_one_line_error(
      out, "/ratings.csv: no such file (data.generic.ratings='ratings.csv'")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [
    ("--config.data.generic.categorical=('category',)",),
    ("--config.data.generic.id_features=true",
     "--config.data.generic.new_item_col=new"),
    # was "(items.csv has ), or set data.generic.id_features=true"
    ("--config.data.generic.new_item_col=new",)])
def test_a_feature_table_split_wrong_names_feature_delimiter(flags,
                                                            tmp_path):
  # A tab-separated click log beside a comma-separated item table: the hint
  # was "is the delimiter ','?" alone, and data.generic.delimiter=',' (the
  # key the README names) then broke the click log.
  root = tmp_path / "shop"
  root.mkdir()
  (root / "ratings.csv").write_text("user\titem\trating\nu1\ti1\t4\n")
  (root / "items.csv").write_text("item,category,new\ni1,toys,0\n")
  out = metarec("data", "prepare", f"--config={config_path('tiny')}",
                "--config.data.name=generic", f"--config.data.root={root}",
                "--config.data.generic.delimiter=\\t",
                "--config.data.generic.item_features=items.csv", *flags,
                f"--out={tmp_path / 'store'}")
  assert_one_line_error(
      out, "is the delimiter ','? (data.generic.feature_delimiter)")
  assert no_store_left(tmp_path)
