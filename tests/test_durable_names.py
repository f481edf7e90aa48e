"""A finished write's name reaches the disk: the folder that holds a
renamed file or folder, or a new interaction log, is fsynced after the
rename (a file's own fsync does not write its name, so a machine crash
could lose a write the engine had called finished or acknowledged)."""

import os
import stat

import pytest

from metarec_jax import atomic
from metarec_jax.data.convert import ratings_io
from metarec_jax.serve import interaction_log


@pytest.fixture
def synced_folders(monkeypatch):
  """`[(folder, its entries then)]` of every folder fsynced, in order."""
  synced = []
  real = os.fsync

  def fsync(fd):
    if stat.S_ISDIR(os.fstat(fd).st_mode):
      path = os.readlink(f"/proc/self/fd/{fd}")
      synced.append((path, sorted(os.listdir(path))))
    return real(fd)

  monkeypatch.setattr(os, "fsync", fsync)
  return synced


def test_a_replaced_file_syncs_its_folder_after_the_rename(tmp_path,
                                                           synced_folders):
  atomic.write_bytes(tmp_path / "config.json", b"{}")
  assert synced_folders == [(str(tmp_path), ["config.json"])]


def test_a_swapped_folder_syncs_its_folders_and_then_its_parent(
    tmp_path, synced_folders):
  out = tmp_path / "export"
  with atomic.Folder(out) as folder:
    with open(folder.path("user/a.txt"), "w") as f:
      f.write("a")
    folder.finish("manifest.json", {"done": True})
  tmp = folder.tmp
  assert (tmp, ["manifest.json", "user"]) in synced_folders
  assert (os.path.join(tmp, "user"), ["a.txt"]) in synced_folders
  # Last, after the rename: the parent holds the finished folder's name.
  assert synced_folders[-1][0] == str(tmp_path)
  assert "export" in synced_folders[-1][1]


def test_a_new_interaction_log_syncs_its_folder_and_parent(tmp_path,
                                                           synced_folders):
  fmt = ratings_io.RatingsFormat(delimiter=",", rating_min=1, rating_max=5,
                                 header=True)
  log = interaction_log.InteractionLog(str(tmp_path / "log"), fmt)
  try:
    folders = dict(synced_folders)
    assert os.path.basename(log.path) in folders[str(tmp_path / "log")]
    assert "log" in folders[str(tmp_path)]
  finally:
    log.close()
