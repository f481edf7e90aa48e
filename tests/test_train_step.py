"""The jitted meta-step: compiled once per shape, chunking is exact."""

import logging
import jax
import numpy as np
import pytest

from conftest import config_path, count_compiles
from metarec_jax import config_io
from metarec_jax.train import Trainer
from metarec_jax.train.step import chunked_meta_grad


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
  config = config_io.load_config_file(config_path("tiny"))
  return Trainer(config, str(tmp_path_factory.mktemp("workdir")))


def test_second_call_of_the_jitted_meta_step_does_not_recompile(trainer):
  state = trainer.init(trainer.rng())
  trainer.compile_all()
  batches = [trainer.sampler.batch(s) for s in range(4)]
  with count_compiles() as compiles:
    for b in batches:
      batch = jax.device_put(b, trainer.task_sharding)
      state, metrics = trainer.step(state, batch, trainer.hyper)
    jax.block_until_ready(metrics)
  assert compiles[0] == 0
  assert int(state.step) == 4
  # The same holds for plain jax.jit dispatch: one compile, then reuse.
  fn = jax.jit(lambda s, b: trainer.step.jitted(s, b, trainer.hyper))
  state2 = trainer.init(trainer.rng())
  width_batches = [b for b in batches
                   if b["support"]["mask"].shape[1] == trainer.sampler.widths[0]]
  b = jax.device_put(width_batches[0] if width_batches else batches[0],
                     trainer.task_sharding)
  with count_compiles() as compiles:
    state2, _ = fn(state2, b)
    first = compiles[0]
    state2, m = fn(state2, b)
    jax.block_until_ready(m)
  assert first >= 1 and compiles[0] == first


def test_other_hyperparameters_reuse_the_compiled_step(trainer):
  """A sweep over `train.lr`, a resume with another clip or non-finite limit,
  a longer schedule: the same compiled step, with the new values in force."""
  tc = trainer.config.train.copy_and_resolve_references()
  tc.lr, tc.grad_clip, tc.warmup_steps = 0.5, 0.25, 0
  tc.end_lr_factor, tc.max_nonfinite = 1.0, 1
  hyper = trainer.hyper_args(tc, horizon=1000)
  batch = jax.device_put(trainer.sampler.batch(0), trainer.task_sharding)
  trainer.step(trainer.init(trainer.rng()), batch, trainer.hyper)  # warm
  with count_compiles() as compiles:
    state, metrics = trainer.step(trainer.init(trainer.rng()), batch, hyper)
    jax.block_until_ready(state)
  assert compiles[0] == 0
  np.testing.assert_allclose(float(metrics["train/lr"]), 0.5)
  # Adam's first step moves each parameter by at most the rate (about the
  # rate where its gradient is not tiny).
  moved = jax.tree.map(lambda new, old: np.abs(np.asarray(new - old)).max(),
                       state.params["model"],
                       trainer.init(trainer.rng()).params["model"])
  assert 0.2 < max(jax.tree.leaves(moved)) <= 0.5 + 1e-6
  # The non-finite limit: a state one skipped step into its streak is
  # refused at a limit of 1 and updated at a limit of 2.
  with count_compiles() as compiles:
    for limit, refused in ((1, 1), (2, 0)):
      tc.max_nonfinite = limit
      start = trainer.init(trainer.rng()).replace(
          nonfinite_streak=jax.device_put(np.int32(1), trainer.replicated))
      state, _ = trainer.step(start, batch, trainer.hyper_args(tc))
      assert int(state.nonfinite_total) == refused
  assert compiles[0] == 0


def test_the_finiteness_flag_is_computed_once(trainer):
  """Every leaf's update selects on one flag of the step's finiteness. XLA
  must not copy the flag's computation (an `is-finite` per leaf) into each
  leaf's update: the program would grow with the square of the leaves and
  compile twice as slowly (`step.computed_once`)."""
  state = trainer.abstract_state()
  compiled = trainer.step.compile(
      state, trainer.abstract_batch(trainer.sampler.widths[0]),
      trainer.abstract_hyper())
  leaves = len(jax.tree.leaves((state.params, state.opt_state)))
  checks = compiled.as_text().count(" is-finite(")
  assert 0 < checks <= leaves + 2, (checks, leaves)


def test_chunked_meta_gradient_equals_unchunked(trainer):
  exp = trainer.exp
  params = {"model": exp.model.init(jax.random.PRNGKey(1)), "inner": None}
  batch = trainer.sampler.batch(0)
  full = jax.jit(lambda p, b: chunked_meta_grad(
      exp.model.loss_fn, exp.meta_config, p, b, chunk_tasks=0))(params, batch)
  chunked = jax.jit(lambda p, b: chunked_meta_grad(
      exp.model.loss_fn, exp.meta_config, p, b, chunk_tasks=4))(params, batch)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(chunked)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5,
                               atol=1e-6)


def test_the_unadapted_weight_adds_the_unadapted_loss_gradient(trainer):
  """`train.unadapted_weight`: the meta-parameters' gradient gains that
  multiple of the gradient of their own (unadapted) query loss, chunked
  or not; the meta-loss and the unadapted loss reported are unchanged."""
  exp = trainer.exp
  params = {"model": exp.model.init(jax.random.PRNGKey(1)), "inner": None}
  # A learned part that moves predictions (the anchored start has none).
  params["model"]["global_bias"] = params["model"]["global_bias"] + 0.5
  batch = trainer.sampler.batch(0)
  query_loss = exp.model.query_loss_fn

  def grad_of(weight, chunk):
    return jax.jit(lambda p, b: chunked_meta_grad(
        exp.model.loss_fn, exp.meta_config, p, b, chunk_tasks=chunk,
        query_loss_fn=query_loss, unadapted_weight=weight))(params, batch)

  plain = grad_of(0.0, 0)
  toward = jax.grad(lambda m: jax.numpy.mean(jax.vmap(
      lambda q: query_loss(m, q))(batch["query"])))(params["model"])
  assert float(np.abs(np.asarray(toward["global_bias"]))) > 1e-3
  for chunk in (0, 4):
    loss, unadapted, grads = grad_of(0.25, chunk)
    np.testing.assert_allclose(loss, plain[0], rtol=2e-5)
    np.testing.assert_allclose(unadapted, plain[1], rtol=2e-5)
    for g, p, u in zip(jax.tree.leaves(grads["model"]),
                       jax.tree.leaves(plain[2]["model"]),
                       jax.tree.leaves(toward)):
      np.testing.assert_allclose(np.asarray(g),
                                 np.asarray(p) + 0.25 * np.asarray(u),
                                 rtol=2e-4, atol=1e-6)
  old = config_io.load_config_file(config_path("tiny"))
  del old.train["unadapted_weight"]
  assert config_io.complete(old).train.unadapted_weight == 0.0


def test_nothing_compiles_after_warmup_over_a_long_run(tmp_path):
  """Every support bucket and the validation are compiled ahead; a run that
  meets every bucket many times and evaluates twice compiles nothing more
  (two buckets: the tiny config has one)."""
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = config_io.load_config_file(config_path("tiny"))
  config.data.buckets = (8, 16)
  config.train.num_steps = 40
  config.train.eval_every_steps = 20
  config.checkpoint.every_steps = 0
  summary = train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 40 and "val" in summary
  assert summary["compiles_after_warmup"] == 0
  # The data's scale, for the end's verdicts (`metarec train`'s tips).
  assert summary["rating_range"] == (1.0, 5.0)


def test_heavy_raters_of_new_items_compile_their_cut_support_ahead(tmp_path):
  """Every validation user rated 30 new items (support sets of 20: the 16
  bucket): the fit of the fewest new-item support ratings cuts them to 1
  and 2, the 8 bucket, which compiled inside the first validation with a
  warning that a shape escaped the buckets (helper T)."""
  import datafiles  # pylint: disable=g-import-not-at-top
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  root = tmp_path / "heavy"
  rng = np.random.default_rng(0)
  datafiles.write(str(root / "ratings.csv"), "user,item,rating\n" + "".join(
      f"u{u},i{i},{rng.integers(1, 6)}\n" for u in range(30)
      for i in list(range(0, 60, 2)) + list(range(60, 90))))
  datafiles.write(str(root / "items.csv"), "item,new\n" + "".join(
      f"i{i},{int(i >= 60)}\n" for i in range(90)))
  config = config_io.load_config_file(config_path("tiny"))
  config.data.name, config.data.root = "generic", str(root)
  config.data.generic.update(item_features="items.csv", new_item_col="new",
                             id_features=True)
  config.data.buckets = (8, 16)
  config.train.num_steps = 2
  config.train.eval_every_steps = 2
  summary = train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["val"]["tasks"] and summary["compiles_after_warmup"] == 0


def test_eval_every_minus_one_never_validates_nor_compiles_for_it(tmp_path,
                                                                  caplog):
  from metarec_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  config = config_io.load_config_file(config_path("tiny"))
  config.train.num_steps = 4
  config.train.eval_every_steps = -1
  config.checkpoint.every_steps = 0
  config.data.buckets = (8, 16)
  with caplog.at_level(logging.INFO, logger="metarec"):
    summary = train_and_evaluate(config, str(tmp_path))
  # Said before the warm-up, which on a large model is minutes of silence:
  # the two support widths, nothing for the validation.
  assert "compiling before the first step (2 job(s)" in caplog.text
  assert summary["step"] == 4 and "val" not in summary
  # A validation at the end would have compiled after the warm-up.
  assert summary["compiles_after_warmup"] == 0
  with open(tmp_path / "metrics.jsonl") as f:
    assert not any("val/" in line for line in f)
  assert not (tmp_path / "eval" / "support_curve.json").exists()


def test_from_max_nonfinite_on_the_step_refuses_every_update(trainer):
  """A finite step updates the state below the limit and is refused (and
  counted) once `train.max_nonfinite` skipped steps in a row were reached,
  so the loop may read the counters late and still stop at the exact step."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  limit = int(trainer.config.train.max_nonfinite)
  batch = jax.device_put(trainer.sampler.batch(0), trainer.task_sharding)

  def step_with_streak(streak):
    state = trainer.init(trainer.rng())
    # The optimizer state changes on any applied update (also at a zero
    # learning rate during the warm-up).
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    state = state.replace(nonfinite_streak=jax.device_put(
        jnp.int32(streak), trainer.replicated))
    state, _ = trainer.step(state, batch, trainer.hyper)
    changed = any(not np.array_equal(a, np.asarray(b)) for a, b in zip(
        jax.tree.leaves(before),
        jax.tree.leaves((state.params, state.opt_state))))
    return changed, int(state.nonfinite_streak), int(state.nonfinite_total)

  assert step_with_streak(limit - 1) == (True, 0, 0)
  assert step_with_streak(limit) == (False, limit + 1, 1)


def test_the_guard_names_the_step_that_reached_the_limit(caplog):
  from metarec_jax.train.guard import NonFiniteGuard, TrainingError  # pylint: disable=g-import-not-at-top

  class NoCheckpoints:
    def wait(self):
      pass

    def latest_step(self):
      return None

  class Counters:
    nonfinite_total = np.int32(0)
    nonfinite_streak = np.int32(0)

  class Train:
    max_nonfinite, lr = 3, 1e-3

  guard = NonFiniteGuard(Train(), NoCheckpoints(), 0, Counters())
  guard.check(4, 0, 2)  # two skipped steps, then finite ones
  assert "steps 1-4: non-finite loss, meta-gradient or update; update" \
         " skipped 2 time(s)" in caplog.text
  # Read at step 10 with a streak of 5: the limit of 3 was reached at step 8.
  with pytest.raises(TrainingError, match=r"^step 8: 3 consecutive steps .*"
                     r"\(train.max_nonfinite=3\); no checkpoint was saved$"):
    guard.check(10, 5, 7)


def test_batches_that_would_not_fit_the_host_are_refused(tmp_path,
                                                         monkeypatch):
  """At train.tasks_per_step=100,000,000 the input pipeline grew past the
  host's 23 GB until the kernel killed the run (exit 137, no line): the
  batches in flight are now weighed against the host's memory first."""
  from metarec_jax import runtime  # pylint: disable=g-import-not-at-top
  from metarec_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  config = config_io.load_config_file(config_path("tiny"))
  trainer = Trainer(config, str(tmp_path / "fits"))
  batch = trainer.abstract_batch(max(trainer.sampler.widths))
  size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(batch))
  # A host of 2.5 batches: the prefetched, the stepped and the built ones
  # (4 or more) take more than half of it.
  monkeypatch.setattr(runtime, "host_memory_bytes", lambda: int(2.5 * size))
  with pytest.raises(InputError, match=r"train.tasks_per_step=\d+: its \d+"
                     r" batches in flight \(0.00 GiB each\) would take more"
                     r" than half of this host's"):
    Trainer(config, str(tmp_path / "too_large"))
  monkeypatch.setattr(runtime, "host_memory_bytes", lambda: 100 * size)
  Trainer(config, str(tmp_path / "fits_again"))
