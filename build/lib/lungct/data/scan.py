"""One pass over the images: drop unreadable files (with reasons) and record what grouping and audits need."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from lungct.data.images import ImageReadError, load_image
from lungct.data.sources import Sample

THUMB_SIZE = 64


@dataclass
class ImageInfo:
    sha256: str
    width: int
    height: int
    mode: str
    format: str
    mean: float
    std: float
    thumb: np.ndarray = field(repr=False)  # zero-mean, unit-norm THUMB_SIZE**2 vector of the grey image


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class ScanResult:
    samples: list[Sample]
    infos: list[ImageInfo]
    skipped: list[Skipped]


def describe_image(path: str | Path) -> ImageInfo:
    grey = load_image(path, "grey")  # first, so unreadable files fail with a clear reason
    data = Path(path).read_bytes()
    try:
        with Image.open(path) as raw:
            mode, fmt = raw.mode, raw.format or Path(path).suffix.lstrip(".").upper()
    except UnidentifiedImageError:  # DICOM: decoded by lungct.dicom (through load_image), not by Pillow
        mode, fmt = grey.mode, "DICOM"
    arr = np.asarray(grey, dtype=np.float32)
    thumb = np.asarray(grey.resize((THUMB_SIZE, THUMB_SIZE), Image.BILINEAR), dtype=np.float32).ravel()
    thumb -= thumb.mean()
    thumb /= np.linalg.norm(thumb) + 1e-8
    return ImageInfo(
        hashlib.sha256(data).hexdigest(), grey.width, grey.height, mode, fmt, float(arr.mean()), float(arr.std()), thumb
    )


def scan_samples(samples: list[Sample], progress: bool = True) -> ScanResult:
    kept, infos, skipped = [], [], []
    for sample in tqdm(samples, desc="checking images", disable=not progress, leave=False):
        try:
            info = describe_image(sample.path)
        except ImageReadError as exc:
            skipped.append(Skipped(sample.path, exc.reason))
            continue
        except OSError as exc:
            skipped.append(Skipped(sample.path, f"cannot read file ({exc.strerror or exc})"))
            continue
        kept.append(sample)
        infos.append(info)
    return ScanResult(kept, infos, skipped)
