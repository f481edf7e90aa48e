"""`atomic.Folder` where `out` is a symbolic link: the new folder takes the
link's place and nothing is left beside it."""

import os

import pytest

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


def _can_exchange(tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "y").mkdir()
  try:
    return atomic.exchange(str(tmp_path / "x"), str(tmp_path / "y"))
  finally:
    os.rmdir(tmp_path / "x")
    os.rmdir(tmp_path / "y")


def test_an_earlier_output_is_swapped_out_in_one_step(tmp_path, monkeypatch):
  """Where the system has `exchange` (Linux 3.15+, glibc 2.28+), the
  earlier folder is never renamed away from `out`: a kill at any moment,
  SIGKILL included, leaves a complete folder there."""
  if not _can_exchange(tmp_path):
    pytest.skip("no renameat2(RENAME_EXCHANGE) here")
  out = tmp_path / "out"
  _write(out, "old")
  moved = []
  real = os.rename
  monkeypatch.setattr(atomic.os, "rename",
                      lambda a, b: (moved.append(os.fspath(a)), real(a, b)))
  _write(out, "new")
  assert moved == []
  assert '"new"' in (out / "record.json").read_text()
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_an_output_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
  """Without `exchange`, a writer killed between its two renames leaves
  nothing at `out` and the earlier output at `.out.tmp-old-*`: the next
  writer restores it, even one that then fails, instead of removing it."""
  out = tmp_path / "out"
  _write(out, "old")
  os.rename(out, tmp_path / ".out.tmp-old-0123abcd")
  os.mkdir(tmp_path / ".out.tmp-89abcdef")  # the killed one's new folder
  try:
    with atomic.Folder(out):
      raise RuntimeError("the next writer fails")
  except RuntimeError:
    pass
  assert '"old"' in (out / "record.json").read_text()
  assert sorted(os.listdir(tmp_path)) == ["out"]
  _write(out, "new")
  assert '"new"' in (out / "record.json").read_text()
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_without_exchange_the_two_renames_still_replace(tmp_path,
                                                        monkeypatch):
  monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
  out = tmp_path / "out"
  _write(out, "old")
  _write(out, "new")
  assert '"new"' in (out / "record.json").read_text()
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_an_exchange_the_system_denies_falls_back_to_two_renames(
    tmp_path, monkeypatch):
  """A sandbox's seccomp filter answers renameat2 with EPERM (plain rename
  still works): every replacement of an earlier output failed, after all
  its work, as "cannot write OUT: Operation not permitted"."""
  from metarec_jax import exchange  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(exchange, "_renameat2", lambda: lambda *args: -1)
  out = tmp_path / "out"
  _write(out, "old")
  _write(out, "new")
  assert '"new"' in (out / "record.json").read_text()
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_a_dangling_link_above_out_is_named_as_a_link(tmp_path):
  """It was called "a file, not a folder"."""
  os.symlink(tmp_path / "gone", tmp_path / "link")
  with pytest.raises(atomic.InputError,
                     match=f"link is a link to {tmp_path}/gone, which does"
                     " not exist"):
    atomic.Folder(tmp_path / "link" / "out")
