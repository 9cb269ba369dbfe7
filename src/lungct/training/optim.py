"""Optimisers and schedules by name, over the parameters that currently train."""

from __future__ import annotations

import torch
from torch import nn

from lungct.config import TrainConfig


def parameter_groups(model: nn.Module, cfg: TrainConfig, layer_decay: float | None) -> list[dict]:
    """Trainable parameters; with `layer_decay`, timm's BEiT-style groups: each backbone block's rate is
    scaled by decay^(blocks above it), so the low, generic layers move least. The head keeps the full rate."""
    if not layer_decay or not hasattr(model, "backbone"):
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    from timm.optim._param_groups import param_groups_layer_decay

    from lungct.models.tiles import unwrap

    # the same parameters either way; timm groups them by the plain backbone's own layer names
    groups = param_groups_layer_decay(unwrap(model.backbone), cfg.weight_decay, layer_decay=layer_decay)
    head = [p for p in model.head.parameters() if p.requires_grad]
    return [g for g in groups if g["params"]] + ([{"params": head, "lr_scale": 1.0}] if head else [])


def build_optimizer(
    model: nn.Module, lr: float, cfg: TrainConfig, layer_decay: float | None = None
) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg, layer_decay)
    for g in groups:
        g["lr"] = lr * g.pop("lr_scale", 1.0)
    match cfg.optimizer:
        case "adamw":
            return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
        case "adam":
            return torch.optim.Adam(groups, lr=lr, weight_decay=cfg.weight_decay)
        case "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
        case "rmsprop":
            return torch.optim.RMSprop(groups, lr=lr, weight_decay=cfg.weight_decay)
    raise ValueError(cfg.optimizer)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epochs: int = 1):
    """Stepped once per epoch. cosine: linear warmup over `warmup_epochs`, then cosine decay to zero at the
    phase's last epoch. constant: SGD gets StepLR, as in the classic recipe; adaptive optimisers keep the rate."""
    if cfg.schedule == "cosine":
        warmup = min(cfg.warmup_epochs, max(0, epochs - 1))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warmup))
        if not warmup:
            return cosine
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
    if cfg.optimizer == "sgd":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    return None
