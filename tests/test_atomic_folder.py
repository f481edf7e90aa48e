"""`atomic.Folder` where `out` is a symbolic link: the new folder takes the
link's place and nothing is left beside it."""

import os

from metarec_jax import atomic


def _write(out, text):
  with atomic.Folder(out) as folder:
    folder.finish("record.json", {"text": text})


def test_a_link_as_out_is_replaced_and_nothing_is_left_beside_it(tmp_path):
  real, link = tmp_path / "real", tmp_path / "link"
  _write(real, "old")
  os.symlink(real, link)
  _write(link, "new")
  assert not os.path.islink(link) and (link / "record.json").exists()
  assert '"new"' in (link / "record.json").read_text()
  # The link's target is not ours to remove: it keeps the old folder.
  assert '"old"' in (real / "record.json").read_text()
  assert sorted(os.listdir(tmp_path)) == ["link", "real"]


def test_a_dangling_link_as_out_is_replaced(tmp_path):
  link = tmp_path / "link"
  os.symlink(tmp_path / "gone", link)
  _write(link, "new")
  assert not os.path.islink(link)
  assert sorted(os.listdir(tmp_path)) == ["link"]


def test_a_stale_link_left_by_a_killed_writer_is_removed(tmp_path):
  (tmp_path / "target").mkdir()
  os.symlink(tmp_path / "target", tmp_path / ".out.tmp-old-deadbeef")
  _write(tmp_path / "out", "new")
  assert sorted(os.listdir(tmp_path)) == ["out", "target"]
