"""ONNX Runtime against PyTorch on the same run, staleness, and the backend option."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lungct.data.transforms import prepare_image
from lungct.errors import LungCTError
from lungct.inference import Predictor


def _batch(predictor: Predictor, slice_dir) -> torch.Tensor:
    paths = sorted(slice_dir.rglob("*.png"))[::4]
    return torch.stack([prepare_image(predictor.card.preprocess.load(p), predictor.card.preprocess) for p in paths])


@pytest.mark.parametrize("tta", [False, True])
def test_onnx_and_pytorch_agree(onnx_run, slice_dir, tta):
    onnx = Predictor(onnx_run, tta=tta)
    torch_ = Predictor(onnx_run, tta=tta, backend="torch")
    assert onnx.backend == "onnx" and "matches" in onnx.backend_reason
    assert torch_.backend == "torch"
    batch = _batch(onnx, slice_dir)
    p1, f1 = onnx.probabilities_and_features(batch)
    p2, f2 = torch_.probabilities_and_features(batch)
    assert p1.shape == p2.shape == (len(batch), 3) and f1.shape == f2.shape == (len(batch), 1280)
    assert np.abs(p1 - p2).max() < 1e-4
    assert np.abs(f1 - f2).max() < 1e-3 * max(1.0, np.abs(f2).max())
    paths = [str(p) for p in sorted(slice_dir.rglob("*.png"))[:5]]
    assert [r["label"] for r in onnx.predict(paths)] == [r["label"] for r in torch_.predict(paths)]


def test_stale_export_falls_back_to_pytorch(onnx_run, tmp_path):
    run = tmp_path / "recalibrated"
    shutil.copytree(onnx_run, run)
    (run / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 2.0}))
    auto = Predictor(run)
    assert auto.backend == "torch" and "stale" in auto.backend_reason and "lungct export" in auto.backend_reason
    with pytest.raises(LungCTError, match="stale"):
        Predictor(run, backend="onnx")
    (run / "model.onnx").unlink()
    assert "no model.onnx" in Predictor(run).backend_reason
    with pytest.raises(LungCTError, match="unknown inference backend"):
        Predictor(run, backend="tensorrt")


def test_uncalibrated_probabilities_without_touching_the_calibration(onnx_run, slice_dir, tmp_path):
    """calibrated=False gives the model's own softmax on both backends, also when the ONNX graph holds the
    temperature, and leaves `predictor.calibration` alone (lungct calibrate used to set it aside)."""
    from lungct.export import export_onnx

    run = tmp_path / "calibrated"
    shutil.copytree(onnx_run, run, ignore=shutil.ignore_patterns("predictions.sqlite*"))
    (run / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 3.0}))
    assert export_onnx(run, samples=2)["calibration"]["in_graph"]
    plain = Predictor(onnx_run, backend="torch")
    batch = _batch(plain, slice_dir)
    raw = plain.probabilities(batch)
    for backend in ("onnx", "torch"):
        predictor = Predictor(run, backend=backend)
        saved = predictor.calibration
        assert np.abs(predictor.probabilities(batch, calibrated=False) - raw).max() < 1e-4, backend
        assert np.abs(predictor.probabilities(batch) - raw).max() > 1e-3, backend  # T = 3 does change them
        assert predictor.calibration is saved
