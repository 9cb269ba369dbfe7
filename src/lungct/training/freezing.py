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


def top_layer_count(amount: int | float, total: int) -> int:
    """How many of `total` top layers `amount` names: an int is a count, a float a fraction (rounded up; 1.0 is
    every layer). The type, not the size, decides: 1.0 once meant "one layer" and left "whole-network" runs
    fine-tuning the top layer only."""
    if isinstance(amount, bool) or amount < 0:
        raise ValueError(f"unfreeze amount {amount!r}: a count (int >= 0) or a fraction (0.0 to 1.0)")
    if isinstance(amount, int):
        return min(amount, total)
    if amount > 1:
        raise ValueError(f"unfreeze fraction {amount} is above 1.0; give a count of layers as an int")
    return min(math.ceil(amount * total), total)


def unfreeze_top(backbone: nn.Module, amount: int | float) -> int:
    """Make the top layers trainable (`amount`: an int count or a float fraction, see top_layer_count).
    Returns the count."""
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
