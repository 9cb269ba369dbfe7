"""Optimisers and schedules by name, over the parameters that currently train."""

from __future__ import annotations

import torch
from torch import nn

from lungct.config import TrainConfig


def build_optimizer(model: nn.Module, lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    match cfg.optimizer:
        case "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        case "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
        case "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
        case "rmsprop":
            return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay)
    raise ValueError(cfg.optimizer)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """SGD gets StepLR, as in the classic recipe; adaptive optimisers keep a constant rate."""
    if cfg.optimizer == "sgd":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return None
