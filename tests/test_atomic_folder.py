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


def test_a_held_lock_of_a_like_named_output_is_not_removed(tmp_path):
  """The lock and the temporary folder of an output named `out.tmp-x`
  start with `out`'s temporary prefix: clearing `out`'s leftovers must not
  take them away while their writer runs."""
  with atomic.Folder(tmp_path / "out.tmp-x") as first:
    open(first.path("half.txt"), "w").close()
    _write(tmp_path / "out", "second")
    assert (tmp_path / ".out.tmp-x.lock").exists()
    assert os.path.exists(first.path("half.txt"))  # its folder too
    first.finish("record.json", {"text": "first"})
  assert sorted(os.listdir(tmp_path)) == ["out", "out.tmp-x"]
