"""What the loop reports about the meta-parameters themselves.

The meta-step's own metrics (losses, norms, the outer learning rate) come
from the jitted step; this module adds, on the host and only on log steps,
the learned inner-loop rates (Meta-SGD: one per element, MAML++: one per
inner step and leaf) as per-leaf scalars, and histograms of every model
parameter and learned rate. Tags:

    inner_lr/<leaf path>              mean learned inner rate of the leaf
    inner_lr/<leaf path>/step_<i>     MAML++: the rate of inner step i
    inner_lr_hist/<leaf path>         histogram of the leaf's learned rates
    params/<leaf path>                histogram of a model parameter

A tag is either a scalar or a histogram, never both: TensorBoard keeps the
first summary kind it sees under a tag.
"""

from __future__ import annotations

from typing import Any

import time

import jax
import numpy as np

from metarec_jax import runtime
from metarec_jax.meta import paths
from metarec_jax.workdir.criterion import RANKING_CRITERION

PyTree = Any

# The HParams table's metric columns: what a hyperparameter search compares.
_TRAIN_METRICS = ("train/loss", "train/query_loss_unadapted",
                  "train/tasks_per_sec")
HPARAM_METRICS = ("val/mae", "val/mae_unadapted", "val/rmse",
                  "val/ndcg@3") + _TRAIN_METRICS
# Implicit feedback's: its validation logs no rating metric, only the
# top-k metrics of eval.scalar_metrics (`val/ranking/{full,sampled}/...`),
# the criterion that selects checkpoints first.
RANKING_HPARAM_METRICS = (
    f"val/ranking/full/{RANKING_CRITERION}", "val/ranking/full/hr@10",
    "val/ranking/full/recall@20", "val/ranking/full/mrr",
    f"val/ranking/sampled/{RANKING_CRITERION}") + _TRAIN_METRICS


def hparam_metrics(implicit: bool) -> tuple[str, ...]:
  """The HParams table's metric tags of a run: the ranking metrics its
  validation logs on implicit feedback (`implicit`), else the rating ones."""
  return RANKING_HPARAM_METRICS if implicit else HPARAM_METRICS


def _leaves_to_host(tree: PyTree | None) -> dict[str, np.ndarray]:
  if not tree:
    return {}
  values = [runtime.to_host(v) for v in jax.tree.leaves(tree)]
  return dict(zip(paths.leaf_paths(tree), values))


def inner_rate_scalars(inner: PyTree | None, *,
                       per_step: bool) -> dict[str, float]:
  """Scalars of the learned inner rates (empty when nothing is learned).

  Args:
    inner: `meta_params["inner"]` (None for MAML, Reptile).
    per_step: the rates are one per inner step (MAML++): also report each
      step's rate, the thing MAML++ learns.
  """
  out = {}
  for path, rates in _leaves_to_host(inner).items():
    out[f"inner_lr/{path}"] = float(rates.mean())
    if per_step:
      for i, rate in enumerate(rates.ravel()):
        out[f"inner_lr/{path}/step_{i}"] = float(rate)
  return out


def parameter_histograms(meta_params: PyTree) -> dict[str, np.ndarray]:
  """`{tag: values}` of every model parameter and learned inner rate."""
  out = {f"params/{p}": v
         for p, v in _leaves_to_host(meta_params["model"]).items()}
  out.update({f"inner_lr_hist/{p}": v
              for p, v in _leaves_to_host(meta_params.get("inner")).items()})
  return out


class StepRate:
  """Tasks per second of the meta-steps between two log steps, without the
  time the loop spent on other work between them (a validation, a save, a
  histogram): counted in, the log step after each validation reported a
  rate some 20 times too low."""

  def __init__(self, step: int, tasks_per_step: int):
    self.step, self.tasks_per_step = step, tasks_per_step
    self.since, self._paused_at = time.perf_counter(), None

  def pause(self, steps_done: Any = None) -> None:
    """The loop turns to other work; `steps_done`, an array of the last
    step, is waited for first where that work would wait for it anyway
    (a validation): the steps still running on the device are theirs."""
    if steps_done is not None:
      jax.block_until_ready(steps_done)
    self._paused_at = time.perf_counter()

  def resume(self) -> None:
    """Back to the steps: the pause is not their time."""
    if self._paused_at is not None:
      self.since += time.perf_counter() - self._paused_at
      self._paused_at = None

  def at(self, step: int) -> float:
    """The rate since the last call (or the start), now at `step`."""
    now = time.perf_counter()
    rate = (step - self.step) * self.tasks_per_step / (now - self.since)
    self.step, self.since = step, now
    return rate
