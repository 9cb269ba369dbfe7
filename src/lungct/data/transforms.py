"""Preprocessing and augmentation as short, readable torchvision v2 pipelines.

`Preprocess` is the single source of truth for input size and normalisation (resolved from the
backbone's pretrained config and the weights' own metadata, then saved with the run), so training,
evaluation, prediction and serving can never disagree about it.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from lungct.config import AugmentConfig
from lungct.data.images import ImageReadError, load_image, open_image


@dataclass(frozen=True)
class Preprocess:
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    color: str = "grey"
    dicom_window: str | None = None  # lungct.dicom window; None (older runs): lung, or stack3 for rgb
    field: str = "full"  # full: the whole slice; body: cropped to the body first (lungct.data.field)

    @property
    def resize_to(self) -> int:
        return round(self.input_size / self.crop_pct)

    def load(self, path: str | Path) -> Image.Image:
        """Decode a file as this model sees it (grey/RGB, DICOM window): the one place callers get that from."""
        return self.apply_field(load_image(path, self.color, self.dicom_window))

    def load_bytes(self, data: bytes, name: str = "upload") -> Image.Image:
        """Decode uploaded bytes (API, app) exactly as `load` decodes a file; `name` only labels errors."""
        if not data:
            raise ImageReadError(name, "empty file")
        return self.apply_field(open_image(io.BytesIO(data), name, self.color, self.dicom_window))

    def apply_field(self, img: Image.Image) -> Image.Image:
        """The slice as the model sees it before resizing: whole, or cropped to the body."""
        if self.field == "body":
            from lungct.data.field import lung_field_crop

            return lung_field_crop(img)
        return img

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            int(d["input_size"]),
            tuple(d["mean"]),
            tuple(d["std"]),
            d.get("interpolation", "bilinear"),
            float(d.get("crop_pct", 1.0)),
            d.get("color", "grey"),
            d.get("dicom_window"),
            d.get("field", "full"),
        )


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
    """A decoded image to the model's input tensor (C, H, W), as at evaluation time."""
    return eval_transform(pre)(resize_transform(pre)(img))
