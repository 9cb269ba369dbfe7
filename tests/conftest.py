"""Shared fixtures: tiny synthetic CT-like datasets and a tiny, fast experiment config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungct.config import ExperimentConfig, parse_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
IQ_OTH = SHARED / "datasets" / "iq-othnccd"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenetv2_100.imagenet.safetensors"


def needs_shared(test):
    """A test that reads ../shared: marked `realdata`, and skipped where the shared data are absent."""
    return pytest.mark.realdata(pytest.mark.skipif(not IQ_OTH.is_dir(), reason="../shared datasets not present")(test))


@pytest.fixture(autouse=True, scope="session")
def _scan_cache_in_tmp(tmp_path_factory):
    """The scan cache (lungct.data.scan_cache) of this test session, never the user's ~/.cache."""
    os.environ["LUNGCT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _no_mlflow_tracking(monkeypatch):
    """Tests never log to the project's MLflow store; tests/tracking switches it back on with a tmp URI."""
    monkeypatch.setenv("LUNGCT_TRACKING", "off")


def synthetic_slice(kind: int, seed: int, size: int = 48) -> Image.Image:
    """A grey 'slice' whose class is visible: a bright disc, a bright bar, or plain texture."""
    rng = np.random.default_rng(seed)
    img = rng.normal(60, 12, (size, size))
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.integers(size // 3, 2 * size // 3, 2)
    if kind == 0:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2] = 220
    elif kind == 1:
        img[:, max(0, cx - 3) : cx + 3] = 220
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L")


CLASS_FOLDERS = ("Bengin cases", "Malignant cases", "Normal cases")


def write_dataset(root: Path, per_class: int = 12, folders=CLASS_FOLDERS, seed: int = 0) -> Path:
    for k, folder in enumerate(folders):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = folder.replace(" cases", " case")
            synthetic_slice(k, seed * 1000 + k * 100 + i).save(d / f"{name} ({i + 1}).png")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def fake_pretrained(tmp_path_factory) -> Path:
    """A weights file for mobilenetv2_100 with random values, loaded exactly like real pretrained weights."""
    import timm
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "mobilenetv2_100.random.safetensors"
    torch.manual_seed(1234)  # the same "pretrained" weights in every session: tests on trained behaviour repeat
    model = timm.create_model("mobilenetv2_100", pretrained=False)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(path),
        metadata={"arch": "mobilenetv2_100", "mean": "0.5,0.5,0.5", "std": "0.5,0.5,0.5"},
    )
    return path


def tiny_config(data: Path, weights: Path | None = None, **train) -> ExperimentConfig:
    """A config that trains in seconds: MobileNetV2 at 32 px, two epochs per phase.

    With `weights` (see fake_pretrained) it fine-tunes in two phases as with real pretrained weights.
    """
    raw = {
        "name": "tiny",
        "seed": 0,
        "data": {"sources": [{"path": str(data)}]},
        "split": {"mode": "random", "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"arch": "mobilenetv2_100", "weights": str(weights) if weights else None, "input_size": 32},
        "train": {
            "batch_size": 8,
            "phase1": {"epochs": 2, "lr": 1e-3},
            "phase2": {"epochs": 2, "lr": 1e-4, "unfreeze": 10},
            **train,
        },
    }
    return parse_config(raw)


@pytest.fixture
def python_sigint():
    """SIGINT at Python's own handler (KeyboardInterrupt), as a terminal's Ctrl-C finds it, whatever the test runner
    or a background shell set (an ignored SIGINT would never interrupt); restored afterwards."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
