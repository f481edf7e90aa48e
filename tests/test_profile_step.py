"""`tools/profile_step.py`: the meta-step's XLA ops by time, beside its
wall time per step."""

import os
import re
import subprocess
import sys

from conftest import ROOT, config_path
from procs import env_with


def test_profile_prints_wall_time_groups_and_top_ops(tmp_path):
  # The tool builds its synthetic store under the temporary directory.
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "profile_step.py"),
       f"--config={config_path('tiny')}", "--config.data.buckets=(16,)",
       "--steps=2", "--top=3"],
      capture_output=True, text=True, cwd=ROOT, timeout=600,
      env=env_with(extra={"TMPDIR": str(tmp_path)}))
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  wall = [l for l in lines if l.startswith("wall ")]
  assert len(wall) == 1, out.stdout
  assert float(re.match(r"wall (\S+) ms per step", wall[0]).group(1)) > 0
  kinds = {m.group(1) for l in lines
           if (m := re.match(r"  (dot|collective|other) +\d+\.\d+$", l))}
  assert "dot" in kinds and "other" in kinds, out.stdout
  top = [l for l in lines if re.match(r"\s*\d+\.\d+ ms\s+x\d+", l)]
  assert 1 <= len(top) <= 3, out.stdout
