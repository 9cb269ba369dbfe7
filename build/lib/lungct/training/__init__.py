"""Training: two-phase fine-tuning with early stopping, checkpoints and resume."""

from lungct.training.trainer import Trainer, train, train_or_reuse

__all__ = ["Trainer", "train", "train_or_reuse"]
