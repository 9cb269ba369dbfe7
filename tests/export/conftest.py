"""The export tests' run: the from-scratch small_cnn at 32 px, one epoch per phase (seconds to train)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungct.training import train
from tests.conftest import tiny_config, write_dataset


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    cfg = tiny_config(write_dataset(root / "data", per_class=6))
    cfg.model.arch = "small_cnn"
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 1
    return train(cfg, root / "run", progress=False).path
