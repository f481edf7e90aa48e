"""Training: `train_and_evaluate(config, workdir)` and its parts."""

from metarec_jax.train.loop import TrainingError, Trainer, train_and_evaluate

__all__ = ["TrainingError", "Trainer", "train_and_evaluate"]
