"""Evaluation: metrics, baselines and the cold-start protocol's scenarios."""

from metarec_jax.eval.run import evaluate_workdir
from metarec_jax.eval.table import format_table
from metarec_jax.eval.tensorboard import scalar_metrics
from metarec_jax.eval.tensorboard import write as write_tensorboard

__all__ = ["evaluate_workdir", "format_table", "scalar_metrics",
           "write_tensorboard"]
