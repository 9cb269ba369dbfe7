"""The body crop keeps a lesion inside the field of view and drops the scanner table."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lungct.data.field import body_box, lung_field_crop, padded_box
from lungct.data.transforms import Preprocess


def synthetic_slice(size: int = 512) -> tuple[Image.Image, tuple[int, int]]:
    """Speckled body ring with black lungs, a small bright lesion in the left lung, and a table below."""
    rng = np.random.default_rng(0)
    img = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - 220) / 150) ** 2 + ((xx - 256) / 200) ** 2 < 1
    img[body] = rng.integers(60, 200, body.sum())
    for cx in (180, 332):  # lungs: black inside the body
        img[((yy - 215) / 90) ** 2 + ((xx - cx) / 55) ** 2 < 1] = 0
    lesion = (200, 160)  # (row, column) in the left lung
    img[(yy - lesion[0]) ** 2 + (xx - lesion[1]) ** 2 < 5**2] = 240
    img[430:445, 40:472] = 230  # the table: wide, flat, well below the body
    return Image.fromarray(img, mode="L"), lesion


def test_crop_keeps_the_lesion_and_drops_the_table():
    img, (row, col) = synthetic_slice()
    left, top, right, bottom = body_box(img)
    assert left <= col <= right and top <= row <= bottom
    assert bottom < 430  # the table's rows are outside the body box
    crop = lung_field_crop(img)
    assert crop.width == crop.height  # square: the aspect of the anatomy is kept
    x0, y0, x1, y1 = padded_box((left, top, right, bottom), *img.size)
    dx, dy = (crop.width - (x1 - x0)) // 2, (crop.height - (y1 - y0)) // 2
    assert np.asarray(crop)[row - y0 + dy, col - x0 + dx] == 240  # the lesion pixel, moved but kept
    assert (np.asarray(crop) == 230).sum(axis=1).max() < 50  # no table row (432 px of 230) is left


def test_blank_slice_is_returned_whole():
    img = Image.new("L", (64, 64))
    assert body_box(img) is None
    assert lung_field_crop(img) is img


def test_preprocess_applies_the_crop_only_when_asked():
    img, _ = synthetic_slice()
    whole = Preprocess(224, (0.5,) * 3, (0.5,) * 3)
    body = Preprocess(224, (0.5,) * 3, (0.5,) * 3, field="body")
    assert whole.apply_field(img) is img
    assert body.apply_field(img).size != img.size
    assert Preprocess.from_dict(body.to_dict()).field == "body"
