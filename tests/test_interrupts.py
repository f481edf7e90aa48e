"""A SIGTERM never splits the swap of a finished folder for an old one."""

import os
import signal

import pytest

from conftest import ROOT
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
  # The two renames of a system without a one-step exchange.
  monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
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


def test_a_signal_swallowed_in_a_finalizer_still_ends_the_process(tmp_path):
  """Raised inside a `__del__` or a garbage-collector callback (JAX's
  `_xla_gc_callback`), the exception was printed as "ignored" and the
  command ran on to exit 0."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = tmp_path / "finalizer.py"
  script.write_text(
      "import os, signal\n"
      "from metarec_jax import interrupts\n"
      "class Finalized:\n"
      "  def __del__(self):\n"
      "    os.kill(os.getpid(), signal.SIGTERM)\n"
      "    for _ in range(100_000):  # the handler runs here\n"
      "      pass\n"
      "with interrupts.stop_on_signals():\n"
      "  obj = Finalized()\n"
      "  del obj\n"
      "  print('ran on')\n")
  out = subprocess.run([sys.executable, str(script)], capture_output=True,
                       text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 128 + signal.SIGTERM, (out.stdout, out.stderr)
  assert "ran on" not in out.stdout
  assert out.stderr.strip().splitlines()[-1] == "metarec: terminated (SIGTERM)"


def test_a_swallowed_signal_removes_the_folder_being_written(tmp_path):
  """Landed in JAX's gc callback during `metarec export`, SIGTERM ended
  the process at once with "metarec: terminated" and left `.export.tmp-*`
  beside the output (a CI run of the export test met it)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = tmp_path / "writer.py"
  script.write_text(
      "import os, signal, sys\n"
      "from metarec_jax import atomic, interrupts\n"
      "class Finalized:\n"
      "  def __del__(self):\n"
      "    os.kill(os.getpid(), signal.SIGTERM)\n"
      "    for _ in range(100_000):  # the handler runs here\n"
      "      pass\n"
      "with interrupts.stop_on_signals('metarec export'):\n"
      "  with atomic.Folder(sys.argv[1]) as folder:\n"
      "    open(folder.path('a.txt'), 'w').write('half')\n"
      "    obj = Finalized()\n"
      "    del obj\n"
      "    print('ran on')\n")
  out_dir = tmp_path / "out"
  out = subprocess.run([sys.executable, str(script), str(out_dir)],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 128 + signal.SIGTERM, (out.stdout, out.stderr)
  assert "ran on" not in out.stdout
  assert out.stderr.strip().splitlines()[-1] == (
      "metarec export: terminated (SIGTERM)")
  assert sorted(os.listdir(tmp_path)) == ["writer.py"]  # no tmp, no lock


def test_default_action_inside_the_block_only():
  with interrupts.stop_on_signals():
    mine = signal.getsignal(signal.SIGTERM)
    with interrupts.default_action():
      assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
      assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is mine


@pytest.mark.parametrize("stopped", [True, False])
def test_a_program_stopped_by_a_signal_ends_without_finalization(
    tmp_path, stopped):
  """`end_program`: after a stop by a signal the process ends at once
  (XLA's compiler threads made Python's finalization segfault `metarec
  serve` stopped during start-up), its output flushed; otherwise it
  exits normally, finalization and `atexit` included."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  marker = tmp_path / "finalized"
  script = tmp_path / "program.py"
  script.write_text(
      "import atexit, os, signal, sys\n"
      "from metarec_jax import interrupts\n"
      f"atexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
      "status = 0\n"
      "try:\n"
      "  with interrupts.stop_on_signals('metarec serve'):\n"
      f"    if {stopped}:\n"
      "      os.kill(os.getpid(), signal.SIGTERM)\n"
      "      for _ in range(100_000):  # the handler runs here\n"
      "        pass\n"
      "except interrupts.Terminated as e:\n"
      "  status = 128 + int(e.signum)\n"
      "print('buffered', end='')\n"
      "interrupts.end_program(status)\n")
  out = subprocess.run([sys.executable, str(script)], capture_output=True,
                       text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.stdout == "buffered"  # flushed either way
  assert out.returncode == (128 + signal.SIGTERM if stopped else 0)
  assert marker.exists() is not stopped
