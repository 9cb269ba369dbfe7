"""Which backbone parameters train in each phase, and BatchNorm statistics kept frozen.

"Layers" are the backbone's modules that own parameters (convolutions, norms, dense layers), in
definition order, which for timm models is input-to-output order; "the top 30 layers" are the last 30.
"""

from __future__ import annotations

import math

from torch import nn


def parameter_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def top_layer_count(amount: float, total: int) -> int:
    """How many of `total` top layers `amount` names: >= 1 a count, below 1 a fraction (rounded up)."""
    n = int(amount) if amount >= 1 else math.ceil(amount * total)
    return max(0, min(n, total))


def unfreeze_top(backbone: nn.Module, amount: float) -> int:
    """Make the top layers trainable: `amount` >= 1 is a count, below 1 a fraction. Returns the count."""
    layers = parameter_layers(backbone)
    n = top_layer_count(amount, len(layers))
    set_trainable(backbone, False)
    for layer in layers[len(layers) - n :]:
        for p in layer.parameters(recurse=False):
            p.requires_grad_(True)
    return n


def freeze_batchnorm_stats(module: nn.Module) -> None:
    """Put every BatchNorm in eval mode (call after model.train()): running stats stay as pretrained.

    The shared MobileNetV2 has BatchNorm folded into its convolutions; batch statistics would undo the fold.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
