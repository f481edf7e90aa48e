"""Shared test setup: fake CPU devices, quiet logs, paths to data.

Several fake CPU devices make every test session exercise the sharded code
paths. Real data comes from `METAREC_TEST_DATA` (default `../shared/data`
beside the project); with `CI=true` a missing folder fails instead of
skipping.
"""

import contextlib
import logging
import os
import sys
import tempfile

import jax

NUM_DEVICES = 4
jax.config.update("jax_num_cpu_devices", NUM_DEVICES)
# One persistent compilation cache per test session, shared by the `metarec`
# processes the end-to-end tests start: their second start skips compiling.
os.environ.setdefault("METAREC_COMPILATION_CACHE",
                      tempfile.mkdtemp(prefix="metarec-xla-"))
# ... and by the tests that train in this process: the same small programs
# are built by many of them.
from metarec_jax import runtime  # noqa: E402  pylint: disable=g-import-not-at-top
runtime.enable_compilation_cache()

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from absl import logging as absl_logging  # noqa: E402

absl_logging.set_verbosity(absl_logging.WARNING)
logging.getLogger("absl").setLevel(logging.WARNING)


def config_path(name: str) -> str:
  return os.path.join(ROOT, "configs", f"{name}.py")


@pytest.fixture(scope="session")
def shared_data() -> str:
  """The folder of real test data (MovieLens-1M with MeLU features)."""
  path = os.environ.get("METAREC_TEST_DATA",
                        os.path.join(ROOT, "..", "shared", "data"))
  if not os.path.isdir(os.path.join(path, "ml-1m")):
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(f"test data not found at {path} (set METAREC_TEST_DATA)")
    pytest.skip(f"test data not found at {path}")
  return path


@contextlib.contextmanager
def count_compiles():
  """Counts the programs XLA compiled inside the block, or loaded from the
  persistent compilation cache: `with ... as n: n[0]`."""
  counter = [0]

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      counter[0] += 1

  def hit_listener(event, **kwargs):
    del kwargs
    if event == "/jax/compilation_cache/cache_hits":
      counter[0] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  jax.monitoring.register_event_listener(hit_listener)
  try:
    yield counter
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.monitoring.unregister_event_listener(hit_listener)


@pytest.fixture(scope="session")
def tiny_metasgd_run(tmp_path_factory) -> str:
  """A finished `configs/tiny.py` run with Meta-SGD (learned inner rates).

  Trained once per session, in process, and shared by the tests that read
  a run's outputs (TensorBoard events, metrics.jsonl, support curve, plots).
  """
  from metarec_jax import config_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("tiny_metasgd"))
  config = config_io.apply_overrides(
      config_io.load_config_file(config_path("tiny")),
      [("meta.algorithm", "metasgd"), ("log.histogram_every_steps", "4")])
  train_and_evaluate(config, workdir)
  return workdir
