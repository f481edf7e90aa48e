"""A full disk is one line naming the path and the cause; nothing is lost.

The disk fills through a file-size limit (`RLIMIT_FSIZE`, no root needed)
set in the real `metarec` process, with `SIGXFSZ` ignored so that a write
past the limit fails with EFBIG ("File too large") as a full disk fails
with ENOSPC, instead of killing the process.
"""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, config_path
from procs import checkpoint_steps, env_with, metarec

LIMIT = 1 << 20  # bytes per file: above every compilation cache entry
# A 100,000-row zip embedding makes every checkpoint's data file larger.
TRAIN = [f"--config={config_path('tiny')}", "--config.train.eval_every_steps=-1",
         "--config.data.buckets=(16,)", "--config.log.every_steps=5",
         "--config.data.synthetic.zip_vocab=100000"]


# Sets the limit, then becomes `metarec` (exec keeps both the limit and the
# ignored signal); a preexec_fn would run Python in a child forked from
# this multithreaded (JAX) process.
CAPPED = ("import os, resource, signal, sys; limit = int(sys.argv[1]);"
          " signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
          " resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit));"
          " os.execv(sys.executable, [sys.executable, '-m',"
          " 'metarec_jax.cli'] + sys.argv[2:])")


def limited(*args, limit=LIMIT, timeout=600):
  """`metarec ARGS` with every file it writes capped at `limit` bytes."""
  return subprocess.run([sys.executable, "-c", CAPPED, str(limit), *args],
                        capture_output=True, text=True, cwd=ROOT,
                        timeout=timeout, env=env_with())


def assert_one_line_failure(out, *parts):
  """Exit status 1, no traceback, the last stderr line the only error."""
  assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert [l for l in lines if ": error: " in l] == lines[-1:], out.stderr
  for part in parts:
    assert part in lines[-1], lines[-1]


def leftovers(folder) -> list[str]:
  return [n for n in os.listdir(folder) if ".tmp" in n]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished 6-step run with checkpoints at steps 3 and 6."""
  workdir = str(tmp_path_factory.mktemp("full_disk") / "run")
  out = metarec("train", *TRAIN, f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr
  assert checkpoint_steps(workdir) == [3, 6]
  return workdir


def state_of(workdir, step):
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))


def test_a_checkpoint_that_does_not_fit_is_one_line_and_the_last_survives(
    run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(run, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  out = limited("train", f"--workdir={workdir}")  # resumes at step 3
  assert_one_line_failure(
      out, f"cannot write {workdir}/checkpoints/6: File too large",
      "the newest checkpoint is still step 3")
  assert checkpoint_steps(workdir) == [3]
  assert leftovers(os.path.join(workdir, "checkpoints")) == []
  before, after = state_of(run, 3), state_of(workdir, 3)  # still readable
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


def test_an_export_that_does_not_fit_leaves_the_earlier_one(run, tmp_path):
  store = os.path.join(run, "store")
  offsets = np.load(os.path.join(store, "offsets.npy"))
  items = np.load(os.path.join(store, "items.npy"))
  ratings = np.load(os.path.join(store, "ratings.npy"))
  users = np.repeat(np.arange(1, len(offsets)), np.diff(offsets))
  csv = tmp_path / "ratings.csv"
  csv.write_text("user,item,rating\n" + "".join(
      f"{u},{i + 1},{r:g}\n" for u, i, r in zip(users, items, ratings)))
  out_dir = tmp_path / "export"
  out_dir.mkdir()  # an earlier export, as far as the writer can tell
  (out_dir / "manifest.json").write_text('{"format": "metarec-export"}')
  out = limited("export", f"--workdir={run}", f"--ratings={csv}",
                f"--out={out_dir}")
  assert_one_line_failure(out, f"cannot write {out_dir}/", "File too large")
  assert os.listdir(out_dir) == ["manifest.json"]
  assert leftovers(tmp_path) == []


def test_a_store_that_does_not_fit_leaves_the_earlier_one(tmp_path):
  out_dir = str(tmp_path / "store")
  assert metarec("data", "synth", f"--out={out_dir}",
                 "--num_users=50").returncode == 0
  before = sorted(os.listdir(out_dir))
  out = limited("data", "synth", f"--out={out_dir}", "--num_users=3000",
                limit=20000)
  assert_one_line_failure(out, f"cannot write {out_dir}", "File too large")
  assert sorted(os.listdir(out_dir)) == before
  assert leftovers(tmp_path) == []
  assert metarec("data", "inspect", f"--store={out_dir}").returncode == 0


def test_prepare_onto_a_full_disk_is_one_line(shared_data, tmp_path):
  import datafiles  # pylint: disable=g-import-not-at-top
  root = datafiles.ml1m_subset(shared_data, str(tmp_path / "ml-1m"), 100)
  out_dir = str(tmp_path / "store")
  out = limited("data", "prepare", "--dataset=movielens-1m", f"--root={root}",
                f"--out={out_dir}", limit=20000)
  assert_one_line_failure(out, f"cannot write {out_dir}", "File too large")
  assert not os.path.exists(out_dir) and leftovers(tmp_path) == []


def test_a_file_that_cannot_be_made_says_how_large_it_was(tmp_path):
  """`data synth --num_users=100000000000` ended in "No space left on
  device" alone: the size asked for is the cause to see. (4 PB is beyond
  any file system's largest file, so nothing is reserved.)"""
  from metarec_jax import atomic  # pylint: disable=g-import-not-at-top
  with pytest.raises(OSError) as e:
    atomic.allocate_npy(tmp_path / "huge.npy", np.int32, (10**15,))
  assert str(tmp_path / "huge.npy") in str(e.value)
  assert "(the file takes 4,000,000,000,000,000 bytes)" in str(e.value)
