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
    # the default run's model.json: a 256 px resize and a 224 px crop, resized_crop's one-step path on 512 px slices
    Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 0.875),
    Preprocess(224, *IMAGENET),  # no crop
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


@pytest.mark.parametrize("size", [(512, 512), (640, 640), (300, 300), (160, 160), (1024, 1024)])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_one_step_resized_crop_gives_the_pixels_of_resize_then_crop(size, mode, monkeypatch):
    """resized_crop resamples only the kept square (Pillow's resize box) for these sizes, and must give exactly
    the pixels of the whole resize followed by the crop; the two-step path is disabled to prove it is not taken."""
    rng = np.random.default_rng(size[0])
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
    for interpolation in ("bicubic", "bilinear", "nearest"):
        pre = Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation, 0.875)
        two_step = np.asarray(pre.center_crop(pre.resize(img)))
        with monkeypatch.context() as patch:
            patch.setattr(Preprocess, "center_crop", lambda *_: pytest.fail("the two-step path was taken"))
            one_step = np.asarray(pre.resized_crop(img))
        assert one_step.shape == two_step.shape and np.array_equal(one_step, two_step), interpolation


@pytest.mark.parametrize("size", [(512, 384), (500, 500), (200, 120)])
def test_resized_crop_falls_back_to_two_steps_where_one_step_would_not_be_exact(size):
    """Scale factors that are not multiples of 1/1024 (500 to 286 px; a non-square slice's long side) must take the
    two-step path: resampling only the crop's box at these scales differs from it in some pixels of each of these
    images (Pillow's centre arithmetic rounds differently), so a guard that let them through fails here."""
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0]), dtype=np.uint8), mode="L")
    pre = Preprocess(250, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 0.875)
    assert np.array_equal(np.asarray(pre.resized_crop(img)), np.asarray(pre.center_crop(pre.resize(img))))
