"""A SIGTERM never splits the swap of a finished folder for an old one."""

import os
import signal

import pytest

from metarec_jax import atomic, interrupts


def test_sigterm_during_the_swap_is_raised_after_it(tmp_path, monkeypatch):
  out = tmp_path / "out"
  out.mkdir()
  (out / "record.json").write_text("old")
  rename = os.rename

  def rename_then_signal(src, dst):
    rename(src, dst)
    if "old-" in os.path.basename(dst):
      # After the old folder moved aside, before the new one moves in.
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(os, "rename", rename_then_signal)
  with interrupts.stop_on_signals():
    with pytest.raises(interrupts.Terminated):
      with atomic.Folder(out) as folder:
        folder.finish("record.json", {"new": True})
  assert os.listdir(tmp_path) == ["out"]  # nothing left beside it
  assert (out / "record.json").read_text().startswith("{")  # the new one


def test_sigterm_while_writing_removes_the_temporary_folder(tmp_path):
  out = tmp_path / "out"
  with interrupts.stop_on_signals():
    with pytest.raises(interrupts.Terminated):
      with atomic.Folder(out) as folder:
        folder.save_array("a.npy", [1, 2, 3])
        os.kill(os.getpid(), signal.SIGTERM)
        folder.finish("record.json", {})
  assert os.listdir(tmp_path) == []


def test_handlers_come_back_after_the_block():
  before = signal.getsignal(signal.SIGTERM)
  with interrupts.stop_on_signals():
    assert signal.getsignal(signal.SIGTERM) is not before
  assert signal.getsignal(signal.SIGTERM) is before
