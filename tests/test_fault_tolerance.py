"""Kill it at any moment and lose nothing: kill -9, SIGTERM, SIGINT.

Every test runs `metarec train` as real processes on real orbax folders.
(Damaged checkpoints: test_checkpoint_recovery.py; non-finite states:
test_nonfinite.py.)
"""

import re
import signal

from faults import QUIET, TINY, assert_bitwise_equal, saved_state
from procs import checkpoint_steps, metarec, start, tmp_checkpoints, wait_for


def test_kill9_and_resume_is_bitwise_identical(tmp_path):
  args = [TINY, "--config.train.num_steps=36",
          "--config.checkpoint.every_steps=4", *QUIET]
  straight = str(tmp_path / "straight")
  out = metarec("train", *args, f"--workdir={straight}")
  assert out.returncode == 0, out.stderr

  killed = str(tmp_path / "killed")
  proc = start("train", *args, f"--workdir={killed}")
  wait_for(lambda: any(s >= 12 for s in checkpoint_steps(killed)), proc=proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert max(checkpoint_steps(killed)) < 36
  out = metarec("train", f"--workdir={killed}")  # config from the workdir
  assert out.returncode == 0, out.stderr
  assert "resumed from the checkpoint of step" in out.stderr
  assert_bitwise_equal(saved_state(straight, 36), saved_state(killed, 36))
  # The restart compiled nothing: its warm-up programs came from the
  # persistent compilation cache that the earlier processes filled.
  hits = re.findall(r"compiled, (\d+) from the persistent"
                    r" compilation cache\)", out.stderr)
  assert len(hits) == 1 and int(hits[0]) > 0, out.stderr


def test_sigterm_saves_the_step_reached_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  args = [TINY, "--config.train.num_steps=400",
          "--config.checkpoint.every_steps=50", *QUIET]
  proc = start("train", *args, f"--workdir={workdir}")
  wait_for(lambda: checkpoint_steps(workdir), proc=proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  line = [l for l in err.splitlines() if "stopped by a signal at step" in l]
  assert line and "metarec train --workdir=" in line[0]
  step = int(line[0].split("at step ")[1].split()[0])
  assert step in checkpoint_steps(workdir) and step < 400
  out = metarec("train", f"--workdir={workdir}",
                "--config.train.num_steps=" + str(step + 3))
  assert out.returncode == 0, out.stderr
  assert f"resumed from the checkpoint of step {step}" in out.stderr
  assert step + 3 in checkpoint_steps(workdir)


def test_preemption_exit_status_is_configurable(tmp_path):
  workdir = str(tmp_path / "run")
  proc = start("train", TINY, f"--workdir={workdir}", *QUIET,
               "--config.train.num_steps=400",
               "--config.checkpoint.every_steps=50",
               "--config.train.preempt_exit_code=75")
  wait_for(lambda: checkpoint_steps(workdir), proc=proc)
  proc.send_signal(signal.SIGINT)
  proc.communicate(timeout=120)
  assert proc.returncode == 75


def test_kill9_during_a_save_resumes_from_the_previous_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  # A large zip embedding table makes each save take a while.
  args = [TINY, f"--workdir={workdir}", *QUIET,
          "--config.data.synthetic.zip_vocab=400000",
          "--config.model.embed_dim=16", "--config.train.num_steps=40",
          "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=2"]
  proc = start("train", *args)
  wait_for(lambda: checkpoint_steps(workdir), proc=proc, interval=0.01)
  first = checkpoint_steps(workdir)[-1]
  seen = wait_for(lambda: [n for n in tmp_checkpoints(workdir)
                           if not n.startswith(str(first) + ".")],
                  proc=proc, interval=0.001)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  complete = checkpoint_steps(workdir)
  in_flight = int(seen[0].split(".")[0])
  assert in_flight not in complete, "the kill came after the save committed"
  out = metarec("train", f"--workdir={workdir}",
                "--config.train.num_steps=" + str(max(complete) + 2))
  assert out.returncode == 0, out.stderr
  assert (f"resumed from the checkpoint of step {max(complete)}"
          in out.stderr)
  assert not tmp_checkpoints(workdir)  # the half-written folder is gone
