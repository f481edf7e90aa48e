"""A joined run in which one process fails stops every process with its
error, in one line and with its exit status.

Before: an error on process 1 only (its data refused) left process 0 in a
collective until it died of a gloo timeout in a traceback (exit 1); one on
process 0 only left it in JAX's shutdown barrier for minutes before a C++
abort (exit 134), while process 1 said process 0 "has not answered"
(killed?). Hosts reading different data trained on a mix of both, without
a word; hosts given their own work directories hung at the first
checkpoint, deaf to SIGTERM.
"""

import os
import shutil

import numpy as np
import pytest

from procs import metarec, run_together
from test_cluster_join import TINY, _last_lines_of_two
from test_multiprocess import free_port


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
  """The tiny config's store, the same data edited, and a store of another
  synthetic seed (which the tiny config refuses)."""
  top = tmp_path_factory.mktemp("stores")
  for name, seed in (("good", 0), ("other_seed", 1)):
    out = metarec("data", "prepare", TINY, f"--out={top / name}",
                  f"--config.data.synthetic.seed={seed}")
    assert out.returncode == 0, out.stderr
  shutil.copytree(top / "good", top / "edited")
  ratings = np.load(top / "edited" / "ratings.npy")
  ratings[0] = ratings[0] % 5 + 1  # another rating, the same structure
  np.save(top / "edited" / "ratings.npy", ratings)
  return top


def two_runs(tmp_path, flags, **patches):
  port = free_port()
  lines = {i: (last, err) for i, last, err in _last_lines_of_two(
      tmp_path, port, [("--num_processes=2",) + f for f in flags],
      **patches)}
  return port, lines


@pytest.mark.parametrize("failing", [0, 1])
def test_an_input_error_of_one_process_stops_every_process_with_it(
    tmp_path, stores, failing):
  flags = [(f"--config.data.store={stores / 'good'}",)] * 2
  flags[failing] = (f"--config.data.store={stores / 'other_seed'}",)
  port, lines = two_runs(tmp_path, flags)
  error = f"{stores / 'other_seed'}: the synthetic store was generated with"
  last, err = lines[failing]
  assert last.startswith(f"metarec train: error: {error}"), err
  last, err = lines[1 - failing]
  assert last.startswith(
      f"metarec train: error: process {1 - failing}: process {failing} of"
      f" the run at 127.0.0.1:{port} stopped: {error}"), err
  assert "Traceback" not in err and "Check failure" not in err


def test_processes_reading_different_data_stop(tmp_path, stores):
  port, lines = two_runs(tmp_path, [
      (f"--config.data.store={stores / 'good'}",),
      (f"--config.data.store={stores / 'edited'}",)])
  error = (f"{stores / 'edited'}: process 1 reads other data than process 0"
           " (its task store: ")
  assert lines[1][0].startswith(f"metarec train: error: {error}"), lines[1][1]
  assert "every process must read the same data" in lines[1][0]
  # The edit kept the sizes: the line showed two equal counts.
  assert "the sizes of process 0's, other contents: SHA-256" in lines[1][0]
  assert lines[0][0].startswith(
      f"metarec train: error: process 0: process 1 of the run at"
      f" 127.0.0.1:{port} stopped: {error}"), lines[0][1]


def test_processes_without_a_shared_work_directory_stop(tmp_path):
  own = tmp_path / "own"
  # Process 1 looks for process 0's work directory 3 s, not the product's
  # 30 s (the patch is given to both; only process 1 looks).
  port, lines = two_runs(tmp_path, [(), (f"--workdir={own}",)],
                         shared_wait_s=3)
  error = (f"{own}: process 1 does not see process 0's work directory: its"
           " train.lock does not name process 0 as the trainer after 3 s;"
           " --workdir must be one folder that every process shares")
  assert lines[1][0].startswith(f"metarec train: error: {error}"), lines[1][1]
  assert lines[0][0].startswith(
      f"metarec train: error: process 0: process 1 of the run at"
      f" 127.0.0.1:{port} stopped: {error}"), lines[0][1]
  assert os.path.exists(tmp_path / "w" / "train.lock")
  # Process 1's own folder, which it made, is gone again (it was left empty).
  assert not os.path.exists(own)


@pytest.mark.parametrize("failing", [0, 1])
def test_a_bug_in_one_process_stops_every_process_naming_it(tmp_path,
                                                             failing):
  """Before, the others said only that the failing process "has not
  answered" (killed?), a minute later."""
  port = free_port()
  ends = run_together([(
      ("train", TINY, f"--workdir={tmp_path / 'w'}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}", "--join_timeout=60"),
      {"bug_in_process": failing}) for i in range(2)], timeout=120)
  problem = ("a bug stopped it (ZeroDivisionError: an injected bug); its"
             " traceback is in its own output")
  returncode, err = ends[failing]
  assert returncode == 1, err
  assert "Traceback" in err and "an injected bug" in err
  assert err.strip().splitlines()[-1] == f"metarec train: error: {problem}"
  returncode, err = ends[1 - failing]
  assert returncode == 1, err
  assert err.strip().splitlines()[-1] == (
      f"metarec train: error: process {1 - failing}: process {failing} of"
      f" the run at 127.0.0.1:{port} stopped: {problem}")
  assert "Traceback" not in err
