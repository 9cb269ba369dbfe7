"""The torch-free preprocessing (Preprocess.to_array, numpy/Pillow) gives torchvision's numbers, so the
`lungct[serve]` server feeds ONNX Runtime what training and evaluation feed the model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lungct.data.preprocess import Preprocess
from lungct.data.transforms import eval_transform, resize_transform
from tests.conftest import IQ_OTH

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PREPROCESSES = [
    Preprocess(224, *IMAGENET),  # the default model
    Preprocess(320, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 0.875, "rgb"),  # resize past the crop, RGB
    Preprocess(300, *IMAGENET, crop_pct=1.2),  # a crop larger than the resized slice: zero padding
]


def torchvision_input(img: Image.Image, pre: Preprocess) -> np.ndarray:
    return eval_transform(pre)(resize_transform(pre)(img)).numpy()


def real_slices(n: int) -> list:
    files = sorted(p for p in IQ_OTH.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    if not files:
        pytest.skip(f"the IQ-OTH/NCCD images are not in {IQ_OTH}")
    return files[:: max(1, len(files) // n)][:n]


@pytest.mark.parametrize("pre", PREPROCESSES, ids=lambda p: f"{p.input_size}-{p.interpolation}-{p.color}")
def test_numpy_preprocessing_matches_torchvision_on_real_slices(pre):
    for path in real_slices(12):
        img = pre.load(path)
        ours, reference = pre.to_array(img), torchvision_input(img, pre)
        assert ours.dtype == np.float32 and ours.shape == reference.shape == (3, pre.input_size, pre.input_size)
        assert np.abs(ours - reference).max() <= 1e-5, path


@pytest.mark.parametrize("size", [(37, 91), (91, 37), (224, 224), (1, 5)])
def test_numpy_preprocessing_matches_torchvision_on_odd_shapes(size):
    rng = np.random.default_rng(sum(size))
    for pre in PREPROCESSES:
        mode = "L" if pre.color == "grey" else "RGB"
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
        assert np.abs(pre.to_array(img) - torchvision_input(img, pre)).max() <= 1e-5
