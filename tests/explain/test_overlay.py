"""Overlay PNGs stay within their size bound whatever the slice's shape (issue 12: a 20 x 20000 upload drew
a 572 x 466796 px PNG), and ordinary slices keep their usual rendering."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lungct.data.transforms import Preprocess
from lungct.explain.explainer import Explanation
from lungct.explain.overlay import MAX_SIDE, display_size, render_overlay

PRE = Preprocess(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _explanation(width: int, height: int) -> Explanation:
    img = Image.fromarray((np.arange(width * height) % 251).astype(np.uint8).reshape(height, width))
    heat = np.zeros((height, width), np.float32)
    heat[height // 3 : height // 2] = 1.0
    return Explanation(
        heatmap=heat,
        label="malignant",
        probability=0.7,
        predicted="malignant",
        probabilities={"benign": 0.1, "malignant": 0.7, "normal": 0.2},
        method="gradcam",
        layers=["backbone.conv_head"],
        layer_spec="default",
        path="slice.png",
        image=img,
    )


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as img:
        return img.size


@pytest.mark.parametrize(("width", "height"), [(20, 20000), (20000, 20), (3000, 2999)])
@pytest.mark.parametrize("max_side", [MAX_SIDE, 300])
def test_overlay_never_exceeds_its_bound(width, height, max_side):
    w, h = _size(render_overlay(_explanation(width, height), PRE, max_side=max_side))
    assert w <= max_side and h <= max_side, (w, h)


def test_an_ordinary_slice_is_drawn_as_before():
    w, h = _size(render_overlay(_explanation(48, 48), PRE))
    assert 600 < w <= MAX_SIDE and 600 < h <= MAX_SIDE  # 7.5 x 6.9 inches at 100 dpi, tightly cropped


def test_display_size_keeps_the_aspect_and_never_enlarges():
    assert display_size(20, 20000, 1024) == (1, 1024)
    assert display_size(4000, 2000, 1000) == (1000, 500)
    assert display_size(48, 48, 1024) == (48, 48)
