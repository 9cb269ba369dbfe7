"""Acceptance 1: every registered backbone gives a finite, input-sized heatmap at its default layer."""

import numpy as np
import pytest
import torch
from PIL import Image

from lungct.config import HeadConfig
from lungct.data.transforms import Preprocess
from lungct.explain.cam import compute_cams, crop_box, to_image_size
from lungct.explain.layers import check_feature_maps, default_layers
from lungct.models import BACKBONES, CTClassifier, create_backbone

LARGE_STRIDE = {"inception_v3", "inception_resnet_v2", "xception"}  # need more pixels for a >1x1 final map


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_default_layer_heatmap_is_finite_and_input_sized(arch):
    torch.manual_seed(0)
    size = 128 if arch in LARGE_STRIDE else 64
    model = CTClassifier(create_backbone(arch, None, 0, "grey", size).module, 3, HeadConfig()).eval()
    for p in model.parameters():  # as loaded for serving: frozen, yet Grad-CAM must still get gradients
        p.requires_grad_(False)
    layers = default_layers(model, arch)
    assert len(layers) == 1
    check_feature_maps(model, layers, size)
    cams = compute_cams(model, torch.randn(2, 3, size, size), layers, [0, 2])
    assert cams.shape == (2, size, size)
    assert np.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() <= 1


def test_heatmap_lands_on_the_crop_the_model_saw():
    pre = Preprocess(input_size=224, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875)
    cam = np.ones((224, 224), dtype=np.float32)
    out = to_image_size(cam, 512, 400, pre)
    assert out.shape == (400, 512)
    left, top, side = crop_box(512, 400, pre)
    assert side == pytest.approx(350, abs=1)  # 224 / 0.875 = 256 on the short side -> 224 of 256 -> 350 of 400
    assert out[:, : int(left) - 1].max() == 0 and out[: int(top) - 1].max() == 0
    assert out[200, 256] == 1
    # crop_pct 1 on a square image: the whole slice
    full = to_image_size(cam, 300, 300, Preprocess(64, (0.5,) * 3, (0.5,) * 3))
    assert full.min() == 1


def test_grayscale_image_becomes_model_input_of_any_size():
    img = Image.fromarray(np.zeros((37, 53), dtype=np.uint8))
    pre = Preprocess(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    out = to_image_size(np.random.default_rng(0).random((32, 32), dtype=np.float32), img.width, img.height, pre)
    assert out.shape == (37, 53)
