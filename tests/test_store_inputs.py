"""A work directory's store records its input files; a resume given other
data, or a store built again from other files, is refused
(`data/convert/fingerprint.py`, `store_checks.check_inputs`,
`store_checks.check_run_store`)."""

import hashlib
import json
import os
import shutil

import pytest

import datafiles
from cli_run import metarec
from conftest import config_path
from metarec_jax import config_io
from metarec_jax.data import store as store_lib
from metarec_jax.data.convert import fingerprint, prepare, store_checks
from metarec_jax.errors import InputError

RATINGS = "user,item,rating\n" + "".join(
    f"u{u},i{i},{1 + (u + i) % 5}\n" for u in range(40) for i in range(30))


def data_config(root):
  data = config_io.load_config_file(config_path("default")).data
  data.name = "generic"
  data.root = str(root)
  data.generic.id_features = True
  return data


def refusal(root, work, change):
  return (f"{work / 'store'}: the store was built from other input files"
          f" than those in {root} ({change}), and a run trains on its store;"
          " for the new data use a new --workdir; to go on with the data the"
          f" store holds, name it: --config.data.store={work / 'store'}")


@pytest.fixture
def built(tmp_path):
  """(data root, work directory of a run that saved a checkpoint)."""
  root = tmp_path / "shop"
  datafiles.write(str(root / "ratings.csv"), RATINGS)
  work = tmp_path / "work"
  prepare.ensure_store(data_config(root), work)
  os.makedirs(work / "checkpoints" / "1")
  return root, work


def test_the_store_records_each_input_file(built):
  root, work = built
  files = store_lib.open_store(work / "store").manifest["source"]["files"]
  raw = (root / "ratings.csv").read_bytes()
  assert list(files) == ["ratings.csv"]
  assert files["ratings.csv"]["bytes"] == len(raw)
  assert files["ratings.csv"]["sha256"] == hashlib.sha256(raw).hexdigest()


def test_an_implicit_store_records_them_too(tmp_path):
  root = tmp_path / "clicks"
  datafiles.write(str(root / "ratings.csv"), RATINGS)
  data = data_config(root)
  data.implicit.enabled = True
  prepare.ensure_store(data, tmp_path / "work")
  manifest = store_lib.open_store(tmp_path / "work" / "store").manifest
  assert manifest["implicit"]
  assert list(manifest["source"]["files"]) == ["ratings.csv"]
  (root / "ratings.csv").write_text(RATINGS + "u9,i9,5\n")
  store_checks.check_inputs(data, tmp_path / "work")  # nothing trained yet
  os.makedirs(tmp_path / "work" / "checkpoints" / "1")
  with pytest.raises(InputError, match="other input files"):
    store_checks.check_inputs(data, tmp_path / "work")


def test_the_same_files_pass_wherever_they_now_are(built, tmp_path):
  root, work = built
  store_checks.check_inputs(data_config(root), work)
  moved = tmp_path / "moved"
  shutil.copytree(root, moved)  # new modification times, same content
  os.utime(moved / "ratings.csv", ns=(1, 1))
  store_checks.check_inputs(data_config(moved), work)
  os.remove(moved / "ratings.csv")  # inputs deleted: the store stands alone
  store_checks.check_inputs(data_config(moved), work)


def test_other_files_are_refused_naming_the_first_change(built, tmp_path):
  root, work = built
  other = tmp_path / "other"
  datafiles.write(str(other / "ratings.csv"), RATINGS + "u9,i9,5\n")
  size = len(RATINGS)
  with pytest.raises(InputError) as e:
    store_checks.check_inputs(data_config(other), work)
  assert str(e.value) == refusal(
      other, work, f"ratings.csv: {size:,} bytes then, {size + 8:,} now")
  # Edited in place, to the same size: read and compared.
  (root / "ratings.csv").write_text(RATINGS.replace("u0,i0,1", "u0,i0,2"))
  with pytest.raises(InputError) as e:
    store_checks.check_inputs(data_config(root), work)
  assert str(e.value) == refusal(root, work,
                                 "ratings.csv: the same size, other content")
  # Named as a prepared store, it is the user's choice.
  data = data_config(root)
  data.store = str(work / "store")
  store_checks.check_inputs(data, work)


def test_a_store_without_the_record_is_not_checked(built, tmp_path):
  root, work = built
  manifest = work / "store" / "manifest.json"
  record = json.loads(manifest.read_text())
  del record["source"]["files"]
  manifest.write_text(json.dumps(record))
  (root / "ratings.csv").write_text(RATINGS + "u9,i9,5\n")
  store_checks.check_inputs(data_config(root), work)


def test_movielens_records_the_files_it_read(ml1m_tiny_run):
  workdir, _ = ml1m_tiny_run
  config = config_io.read_workdir_config(workdir)
  files = store_lib.open_store(
      os.path.join(workdir, "store")).manifest["source"]["files"]
  assert {"users.dat", "movies.dat", "ratings.dat"} <= set(files)
  store_checks.check_inputs(config.data, workdir)


def test_train_resumed_on_other_data_stops_before_any_work(built, tmp_path):
  root, _ = built
  work = tmp_path / "run"
  flags = [f"--config={config_path('tiny')}", f"--workdir={work}",
           "--config.data.name=generic", "--config.data.generic.id_features=true",
           "--config.train.num_steps=2", "--config.train.eval_every_steps=0"]
  out = metarec("train", *flags, f"--config.data.root={root}")
  assert out.returncode == 0, out.stderr
  metrics = (work / "metrics.jsonl").read_bytes()
  other = tmp_path / "other"
  datafiles.write(str(other / "ratings.csv"), RATINGS + "u9,i9,5\n")
  out = metarec("train", *flags, f"--config.data.root={other}",
                "--config.train.num_steps=4")
  assert out.returncode == 2, out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      "metarec train: error: " + refusal(
          other, work, f"ratings.csv: {len(RATINGS):,} bytes then,"
          f" {len(RATINGS) + 8:,} now"))
  assert (work / "metrics.jsonl").read_bytes() == metrics
  # Evaluation reads the run's store, whatever became of the files.
  (root / "ratings.csv").write_text(RATINGS + "u9,i9,5\n")
  out = metarec("eval", f"--workdir={work}", "--support_curve=false")
  assert out.returncode == 0, out.stderr
  # The store removed, `eval` builds it again: from the edited files it
  # evaluated the run on other users and another split, without a word.
  shutil.rmtree(work / "store")
  out = metarec("eval", f"--workdir={work}", "--support_curve=false")
  assert out.returncode == 2, out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f"metarec eval: error: {work / 'store'}: the store was built again from"
      " other input files than the run trained on (ratings.csv:"
      f" {len(RATINGS):,} bytes then, {len(RATINGS) + 8:,} now); to read"
      " this run, put them back at data.root and remove the store to build"
      " it again; for the new data, train in a new --workdir")
  shutil.rmtree(work / "store")
  (root / "ratings.csv").write_text(RATINGS)  # the run's own files back
  out = metarec("eval", f"--workdir={work}", "--support_curve=false")
  assert out.returncode == 0, out.stderr


def test_records_differ_in_size_content_or_files_not_in_times():
  a = {"r.csv": {"bytes": 10, "mtime_ns": 1, "sha256": "aa"}}
  assert fingerprint.difference(a, a) is None
  moved = {"r.csv": {**a["r.csv"], "mtime_ns": 2}}
  assert fingerprint.difference(a, moved) is None
  assert fingerprint.difference(a, {"r.csv": {**a["r.csv"], "bytes": 11}}) == (
      "r.csv: 10 bytes then, 11 now")
  assert fingerprint.difference(a, {"r.csv": {**a["r.csv"], "sha256": "b"}}) == (
      "r.csv: the same size, other content")
  items = {"i.csv": {"bytes": 1, "mtime_ns": 1, "sha256": "c"}}
  assert fingerprint.difference(a, {**a, **items}) == "i.csv: not read then"
  assert fingerprint.difference({**a, **items}, a) == "i.csv: not read now"


def test_a_fresh_start_after_no_checkpoint_may_take_other_data(tmp_path):
  """config.json records the data of a start that saved no checkpoint:
  nothing was trained on it, so a new start builds from other files."""
  root = tmp_path / "shop"
  datafiles.write(str(root / "ratings.csv"), RATINGS)
  work = tmp_path / "work"
  store = prepare.ensure_store(data_config(root), work)
  config_io.write_workdir_config(
      str(work), config_io.load_config_file(config_path("default")),
      data_files=store.manifest["source"]["files"])
  shutil.rmtree(work / "store")
  (root / "ratings.csv").write_text(RATINGS + "u9,i9,5\n")
  store = prepare.ensure_store(data_config(root), work)
  store_checks.check_run_store(data_config(root), work, store)  # no checkpoint
  os.makedirs(work / "checkpoints" / "3")  # one saved: the run's data
  with pytest.raises(InputError, match="built again from other input files"):
    store_checks.check_run_store(data_config(root), work, store)


def test_a_prepared_store_prepared_again_from_other_files_is_refused(
    tmp_path):
  """`metarec data prepare --out=S` replaces S: a run trained with
  data.store=S then read the new data as its own."""
  root = tmp_path / "shop"
  datafiles.write(str(root / "ratings.csv"), RATINGS)
  data = data_config(root)
  data.store = str(tmp_path / "prepared")
  prepare.prepare(data, data.store)
  work = tmp_path / "work"
  os.makedirs(work / "checkpoints" / "3")
  config_io.write_workdir_config(
      str(work), config_io.load_config_file(config_path("default")),
      data_files=store_lib.open_store(data.store).manifest["source"]["files"])
  store_checks.check_run_store(data, work, prepare.ensure_store(data, work))
  moved = tmp_path / "moved"
  shutil.copytree(root, moved)  # the same files elsewhere: the same data
  shutil.rmtree(data.store)
  prepare.prepare(data_config(moved), data.store)
  store_checks.check_run_store(data, work, prepare.ensure_store(data, work))
  (root / "ratings.csv").write_text(RATINGS + "u9,i9,5\n")
  shutil.rmtree(data.store)
  prepare.prepare(data_config(root), data.store)
  with pytest.raises(InputError, match="prepare data.store again from them"):
    store_checks.check_run_store(data, work, prepare.ensure_store(data, work))



def test_before_any_checkpoint_a_stale_store_is_built_again(tmp_path):
  """A first start that failed after building the store (its users had too
  few ratings), then given more data or other settings, was refused: "use
  a new --workdir". Nothing was trained on that store."""
  root = tmp_path / "shop"
  datafiles.write(str(root / "ratings.csv"), RATINGS)
  work = tmp_path / "work"
  data = data_config(root)
  first = prepare.ensure_store(data, work, rebuild_stale=True)
  stamp = os.stat(work / "store" / "manifest.json").st_mtime_ns
  assert store_checks.stale(data, work) == ""  # the same: kept
  prepare.ensure_store(data, work, rebuild_stale=True)
  assert os.stat(work / "store" / "manifest.json").st_mtime_ns == stamp
  (root / "ratings.csv").write_text(RATINGS + "u99,i99,5\n")
  store_checks.check_inputs(data, work)  # no checkpoint: not refused
  assert store_checks.stale(data, work) == (
      f"its input files changed: ratings.csv: {len(RATINGS):,} bytes then,"
      f" {len(RATINGS) + 10:,} now")
  with pytest.raises(InputError, match="other input files"):
    os.makedirs(work / "checkpoints" / "2")  # a checkpoint: refused
    store_checks.check_inputs(data, work)
  os.rmdir(work / "checkpoints" / "2")
  again = prepare.ensure_store(data, work, rebuild_stale=True)
  assert again.num_users == first.num_users + 1
  assert store_checks.stale(data, work) == ""
  # Other settings: built again too (refused once a checkpoint exists).
  named = data_config(root)
  named.generic.id_features = False
  assert store_checks.stale(named, work) == (
      "the generic store was built with other data.generic settings"
      " (id_features: True there, False now)")
  with pytest.raises(store_checks.StoreMismatch, match="use another work"):
    prepare.ensure_store(named, work)
  prepare.ensure_store(named, work, rebuild_stale=True)
  assert store_checks.stale(named, work) == ""
  # A prepared data.store is never built again.
  named.store = str(work / "store")
  (root / "ratings.csv").write_text(RATINGS)
  assert store_checks.stale(named, work) == ""


def test_train_builds_a_stale_store_again_before_its_first_checkpoint(
    tmp_path):
  root = tmp_path / "shop"
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n" + "".join(
      f"u{u},i{i},4\n" for u in range(5) for i in range(8)))
  work = tmp_path / "run"
  flags = [f"--config={config_path('tiny')}", f"--workdir={work}",
           "--config.data.name=generic", f"--config.data.root={root}",
           "--config.train.num_steps=2", "--config.train.eval_every_steps=0"]
  out = metarec("train", *flags)
  assert out.returncode == 2 and "no training user has" in out.stderr
  assert sorted(os.listdir(work)) == ["store", "train.lock"]
  (root / "ratings.csv").write_text(RATINGS)  # more ratings per user
  out = metarec("train", *flags)
  assert out.returncode == 0, out.stderr
  assert "task store in " + str(work / "store") + " again: the one there" in (
      out.stderr)
  assert store_lib.open_store(work / "store").num_users == 40


def test_a_store_from_before_a_generic_key_existed_is_the_runs_store(
    tmp_path):
  """A key added later (`numeric`, `numeric_bins`) at its default is no
  other setting for a store whose manifest does not list it: its runs
  resume. That store was built as with the default, so a numeric column
  named now is another store."""
  root = tmp_path / "shop"
  datafiles.write(str(root / "ratings.csv"), RATINGS)
  work = tmp_path / "work"
  data = data_config(root)
  prepare.ensure_store(data, work)
  path = work / "store" / "manifest.json"
  manifest = json.loads(path.read_text())
  for key in ("numeric", "numeric_bins"):
    del manifest["source"]["generic"][key]
  path.write_text(json.dumps(manifest))
  assert store_checks.stale(data, work) == ""
  data.generic.numeric_bins = 5
  assert store_checks.stale(data, work) == (
      "the generic store was built with other data.generic settings"
      " (numeric_bins: 10 there, 5 now)")
