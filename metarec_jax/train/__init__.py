"""Training: `train_and_evaluate(config, workdir)` and its parts."""

from metarec_jax.train.guard import TrainingError
from metarec_jax.train.loop import train_and_evaluate
from metarec_jax.train.trainer import Trainer

__all__ = ["TrainingError", "Trainer", "train_and_evaluate"]
