"""Shared test setup: fake CPU devices, quiet logs, paths to data.

Several fake CPU devices make every test session exercise the sharded code
paths. Real data comes from `METAREC_TEST_DATA` (default `../shared/data`
beside the project); with `CI=true` a missing folder fails instead of
skipping.
"""

import atexit
import contextlib
import gc
import logging
import os
import shutil
import sys
import tempfile

# The suite compiles hundreds of small programs and runs each for a few
# steps, so compiling fast beats running fast: LLVM at -O0 without its
# expensive passes, and XLA's classic CPU fusion code generator rather than
# its MLIR fusion emitters (together a quarter of the compile CPU time of
# the tiny meta-step: 7.8 s against 30 s). Every process the tests start
# inherits these flags (see `procs.env_with`); the product's are untouched.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0"
                  " --xla_llvm_disable_expensive_passes=true"
                  " --xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = TEST_XLA_FLAGS  # before JAX starts its backend

import jax  # noqa: E402

NUM_DEVICES = 4
jax.config.update("jax_num_cpu_devices", NUM_DEVICES)
# Started now, so that no test changes the count for the tests after it:
# a command run in this process (`metarec_here` train) calls
# `runtime.configure_cpu_devices`, which before the backends start set 2
# devices (the cores) for the rest of the worker's files.
assert len(jax.devices()) == NUM_DEVICES
# The tests start dozens of `metarec` processes: let them import the
# project's modules from cached bytecode (0.3 s less each) where the
# environment says not to write any.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# One persistent compilation cache per test session, shared by the `metarec`
# processes the end-to-end tests start: their second start skips compiling.
# The process that makes the folder removes it on the way out (the xdist
# workers inherit the variable, so only the controller makes one).
if "METAREC_COMPILATION_CACHE" not in os.environ:
  os.environ["METAREC_COMPILATION_CACHE"] = tempfile.mkdtemp(
      prefix="metarec-xla-")
  atexit.register(shutil.rmtree, os.environ["METAREC_COMPILATION_CACHE"],
                  ignore_errors=True)
# ... and by the tests that train in this process: the same small programs
# are built by many of them.
from metarec_jax import runtime  # noqa: E402  pylint: disable=g-import-not-at-top
runtime.enable_compilation_cache()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from absl import logging as absl_logging  # noqa: E402

absl_logging.set_verbosity(absl_logging.WARNING)
logging.getLogger("absl").setLevel(logging.WARNING)


# The files that take longest (real multi-process runs, trained fixtures)
# start first: pytest-xdist hands out whole files in collection order
# (`--no-loadscope-reorder` in setup.cfg), so a long file collected last
# would run alone at the end of the suite.
LONGEST_FIRST = ("test_multiprocess.py", "test_fault_tolerance.py",
                 "test_export.py", "test_serve.py", "test_nonfinite.py",
                 "test_checkpoint_recovery.py", "test_learners_export.py",
                 "test_device_bench.py", "test_bench.py", "test_testbed.py")
# The session's trained runs (fixtures below).
SHARED_RUNS = ("ml1m_tiny_run", "tiny_metasgd_run")


# Every compiled XLA program keeps its machine code in memory maps of its
# own (about 9 per eager operation on a new shape) until JAX's caches let it
# go, and Linux allows a process 65530 maps (`vm.max_map_count`). An xdist
# worker that had run test_anchored's and test_cold_shares' hundreds of
# programs held 60,887 of them; past the limit LLVM's next map fails, which
# XLA does not survive: a segfault inside a compile (2 of 5 CI runs in the
# fortieth session, in test_members and test_onehot_lookup). So a test that
# leaves its process above MAX_MAPS clears JAX's caches (1 ms when below:
# one read of /proc/self/maps); what took long to compile comes back from
# the persistent compilation cache. Half the kernel's limit: one test adds a
# few thousand at most, and each clear costs the next tests' compiles (the
# suite took 832 s with 20,000, against 755-791 s in the last session's
# runs that did not crash).
MAX_MAPS = 32_000
MAPS_FILE = "/proc/self/maps"  # Linux; elsewhere nothing is counted


def memory_maps() -> int:
  """The memory maps this process holds (0 where the OS does not say)."""
  if not os.path.exists(MAPS_FILE):
    return 0
  with open(MAPS_FILE, "rb") as f:
    return sum(1 for _ in f)


def release_maps(limit: int = MAX_MAPS) -> bool:
  """Clears JAX's caches where the process holds more than `limit` memory
  maps; whether it did."""
  if memory_maps() <= limit:
    return False
  jax.clear_caches()
  gc.collect()
  return True


@pytest.fixture(autouse=True)
def bounded_memory_maps():
  """After each test, `release_maps` (see MAX_MAPS)."""
  yield
  release_maps()


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.path))
    return (LONGEST_FIRST.index(name) if name in LONGEST_FIRST
            else len(LONGEST_FIRST))
  items.sort(key=rank)  # stable: each file keeps its own order


def pytest_xdist_make_scheduler(config, log):
  """pytest-xdist's `--dist loadfile`, except that every file naming one of
  SHARED_RUNS goes to one worker, which trains each run once rather than
  once per worker."""
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=g-import-not-at-top
  here = os.path.dirname(os.path.abspath(__file__))
  shared = set()
  for name in os.listdir(here):
    if name.startswith("test_") and name.endswith(".py"):
      with open(os.path.join(here, name), encoding="utf-8") as f:
        text = f.read()
      if any(run in text for run in SHARED_RUNS):
        shared.add(name)

  class SharedRunsScheduling(LoadFileScheduling):
    def _split_scope(self, nodeid: str) -> str:
      file = super()._split_scope(nodeid)
      return "shared runs" if os.path.basename(file) in shared else file

  return SharedRunsScheduling(config, log)


def config_path(name: str) -> str:
  return os.path.join(ROOT, "configs", f"{name}.py")


def train_then_resume(workdir: str, key: str, first, then, *, data=None):
  """Trains the tiny config 2 steps with `key` (`section.name`) at `first`,
  then resumes it to step 4 with `then` (on `data`'s ratings file if
  given). Returns the resumed run's `config.json`."""
  # pylint: disable=g-import-not-at-top
  from metarec_jax import config_io
  from metarec_jax.train import train_and_evaluate
  section, name = key.split(".")

  def config(steps, value):
    c = config_io.load_config_file(config_path("tiny"))
    if data is not None:
      c.data.name, c.data.root = "generic", str(data)
    c.train.num_steps, c.train.eval_every_steps = steps, -1
    c.checkpoint.every_steps = 2
    c[section][name] = value
    return c

  train_and_evaluate(config(2, first), workdir)
  train_and_evaluate(config(4, then), workdir)
  return config_io.read_workdir_config(workdir)


def model_section(keys: dict):
  """A complete `model` config section with `keys`; every other key as in
  a config without it (`config_io.complete`: `model.anchor` off)."""
  from metarec_jax import config_io  # pylint: disable=g-import-not-at-top
  return config_io.complete({"model": keys}).model


def small_melu(**keys):
  """The `model` section of the small MeLU the model tests build (width-4
  embeddings, hidden 6-5, squared error unless `keys` say otherwise)."""
  return model_section({"name": "melu", "features": (),
                        "exclude_features": (), "embed_dim": 4,
                        "hidden": (6, 5), "embed_std": 1.0, "item_id": False,
                        "loss": "mse", "query_loss": "", "huber_delta": 1.0,
                        **keys})


def synthetic_store(tmp_path_factory, name: str, spec):
  """A synthetic task store of `spec`, written under a fresh temporary
  folder `name` and opened."""
  from metarec_jax.data import store as store_lib  # pylint: disable=g-import-not-at-top
  from metarec_jax.data.convert import synthetic  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp(name) / "store")
  synthetic.generate(spec, path)
  return store_lib.open_store(path)


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


# The tiny-model run on real MovieLens-1M users shared by the eval and
# export tests: trained on the first ML1M_TRAIN_USERS, evaluated and
# exported on ML1M_NEW_USERS.
ML1M_TRAIN_USERS = 120
ML1M_NEW_USERS = range(121, 171)


@pytest.fixture(scope="session")
def ml1m_tiny_run(shared_data, tmp_path_factory):
  """(work directory, ratings file of the new users): three meta-steps of
  `configs/tiny.py` on the first ML1M_TRAIN_USERS users of ML-1M."""
  import datafiles  # pylint: disable=g-import-not-at-top
  from cli_run import metarec  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp("ml1m_tiny")
  root = datafiles.ml1m_subset(shared_data, str(tmp / "ml-1m"),
                               ML1M_TRAIN_USERS)
  workdir = str(tmp / "work")
  out = metarec("train", f"--config={config_path('tiny')}",
                f"--workdir={workdir}", "--config.data.name=movielens-1m",
                f"--config.data.root={root}", "--config.train.num_steps=3",
                "--config.train.eval_every_steps=0",
                "--config.data.buckets=(16,32,64,96)")
  assert out.returncode == 0, out.stderr
  ratings = tmp / "new_users.dat"
  ratings.write_text(datafiles.ml1m_ratings_of(shared_data, ML1M_NEW_USERS))
  return workdir, str(ratings)


def random_tasks(fields, n_tasks=3, n_support=6, n_query=4, seed=0, *,
                 keep=0.85):
  """Random support and query rows of `n_tasks` tasks for the feature
  `fields` (float64 ratings 1-5; each row real with probability `keep`)."""
  r = np.random.default_rng(seed)

  def rows(n):
    feats = {f.name: r.integers(0, f.vocab, (n_tasks, n, f.max_len)
                                if f.kind == "list" else (n_tasks, n))
             for f in fields}
    return {"features": feats,
            "rating": r.integers(1, 6, (n_tasks, n)).astype(np.float64),
            "mask": r.random((n_tasks, n)) < keep}

  return {"support": rows(n_support), "query": rows(n_query)}


def has_training_ratings(export, item_ids) -> bool:
  """Whether each item has training ratings in an anchored model's export
  (its item-bias weight above 0): each of its support rows counts."""
  index = export.item_index(list(item_ids))
  ids = np.asarray(export._tables.item["item_id"])[index]  # pylint: disable=protected-access
  return bool((np.asarray(
      export.meta_params["item_bias"]["embedding"])[ids, 1] > 0).all())


@contextlib.contextmanager
def count_compiles():
  """Counts the programs XLA compiled inside the block, or loaded from the
  persistent compilation cache: `with ... as n: n[0]`. Count within one
  test: between tests `bounded_memory_maps` may clear JAX's caches, so a
  program an earlier test compiled may compile again."""
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
  a run's outputs (TensorBoard events, metrics.jsonl, support curve, plots,
  exports). With two support widths (`data.buckets=(8, 16)`; the tiny
  config has one), so that what is compiled once per width is seen to be.
  """
  from metarec_jax import config_io  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("tiny_metasgd"))
  config = config_io.apply_overrides(
      config_io.load_config_file(config_path("tiny")),
      [("meta.algorithm", "metasgd"), ("log.histogram_every_steps", "4"),
       ("data.buckets", "(8, 16)")])
  train_and_evaluate(config, workdir)
  return workdir
