"""Training: two-phase fine-tuning with early stopping, checkpoints and resume."""

from lungct.training.trainer import Trainer, train

__all__ = ["Trainer", "train"]
