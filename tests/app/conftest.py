"""A tiny trained and evaluated run shared by the app's tests (trained once per session, in seconds)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from lungct.evaluation.evaluate import evaluate
from lungct.training import train
from tests.conftest import synthetic_slice, tiny_config, write_dataset


@pytest.fixture(scope="session")
def app_run(tmp_path_factory, fake_pretrained) -> Path:
    """A fine-tuned MobileNetV2 at 64 px (2x2 last block, so Grad-CAM has something to localise) with RUN/eval."""
    root = tmp_path_factory.mktemp("app")
    data = write_dataset(root / "data", per_class=8)
    cfg = tiny_config(data, fake_pretrained, phase1={"epochs": 1, "lr": 1e-3})
    cfg.train.phase2.epochs = 1
    cfg.model.input_size = 64
    run = train(cfg, root / "run", progress=False).path
    evaluate(run, run / "eval", progress=False, n_bootstrap=100)
    return run


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def slice_png(kind: int = 0, seed: int = 7, size: int = 48) -> bytes:
    return png_bytes(synthetic_slice(kind, seed, size))
