"""Preprocessing and augmentation as short, readable torchvision v2 pipelines, for training and evaluation.

What the model expects (`Preprocess`) and the torch-free form of the evaluation pipeline that serving uses
(`Preprocess.to_array`) live in lungct.data.preprocess; this module re-exports Preprocess.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from lungct.config import AugmentConfig
from lungct.data.preprocess import Preprocess

__all__ = ["Preprocess", "eval_transform", "prepare_image", "resize_transform", "train_transform"]


def _interp(name: str) -> InterpolationMode:
    return InterpolationMode(name) if name in {m.value for m in InterpolationMode} else InterpolationMode.BILINEAR


def resize_transform(pre: Preprocess) -> v2.Transform:
    """The deterministic first step, done once per image and cached by the dataset."""
    return v2.Resize(pre.resize_to, interpolation=_interp(pre.interpolation), antialias=True)


def _finish(pre: Preprocess) -> list[v2.Transform]:
    return [
        v2.CenterCrop(pre.input_size),
        v2.RGB(),  # greyscale CT becomes three identical channels for ImageNet backbones
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(pre.mean), std=list(pre.std)),
    ]


def eval_transform(pre: Preprocess) -> v2.Compose:
    """Applied to images already passed through `resize_transform`."""
    return v2.Compose(_finish(pre))


def train_transform(pre: Preprocess, aug: AugmentConfig) -> v2.Compose:
    steps: list[v2.Transform] = []
    if aug.policy == "trivialaugment":
        steps.append(v2.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR))
    elif aug.policy == "randaugment":
        steps.append(v2.RandAugment(interpolation=InterpolationMode.BILINEAR))
    elif aug.rotation or aug.shift or aug.shear or aug.zoom:
        steps.append(
            v2.RandomAffine(
                degrees=aug.rotation,
                translate=(aug.shift, aug.shift) if aug.shift else None,
                scale=(1 - aug.zoom, 1 + aug.zoom) if aug.zoom else None,
                shear=aug.shear or None,
                interpolation=InterpolationMode.BILINEAR,
            )
        )
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _finish(pre))


def prepare_image(img: Image.Image, pre: Preprocess) -> torch.Tensor:
    """A decoded image to the model's input tensor (C, H, W), as at evaluation time: Preprocess.to_array, the one
    evaluation-time implementation (the same numbers as `eval_transform(resize_transform(...))`, tested)."""
    return torch.from_numpy(pre.to_array(img))
