"""The from-scratch baseline: four conv blocks and global average pooling, about 0.4 M parameters."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class SmallCNN(nn.Module):
    # Mirrors timm's attributes so preprocessing and heads treat it like any other backbone.
    pretrained_cfg: ClassVar[dict] = {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        blocks, in_ch = [], 3
        for width in widths:
            blocks += [
                nn.Conv2d(in_ch, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_ch = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)
