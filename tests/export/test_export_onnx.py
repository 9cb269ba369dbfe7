"""`lungct export --format onnx`: a verified graph with a dynamic batch axis, calibration where it fits, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lungct.cli import main
from lungct.export import export_onnx
from lungct.inference import Predictor


def _copy(run: Path, tmp_path: Path, calibration: dict | None) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    if calibration:
        (out / "calibration.json").write_text(json.dumps(calibration))
    return out


def _inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_cli_exports_temperature_inside_the_graph(cnn_run, tmp_path, capsys):
    run = _copy(cnn_run, tmp_path, {"method": "temperature", "temperature": 2.5})
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "model.onnx" in out and "max abs difference" in out and "temperature" in out
    info = json.loads((run / "export.json").read_text())
    assert info["input"] == {**info["input"], "name": "input", "shape": ["batch", 3, 32, 32]}
    assert info["opset"] == 18 and info["model_version"] == Predictor(run, backend="torch").model_version
    assert info["calibration"]["in_graph"] is True and info["calibration"]["temperature"] == 2.5
    assert info["outputs"]["features"] == ["batch", 256]
    assert max(info["check"]["max_abs_diff"].values()) < 1e-4 and info["check"]["batch_sizes"][0] == 1

    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 3, 17):  # the batch axis is dynamic
        probs, logits, features = session.run(None, {"input": _inputs(n).numpy()})
        assert probs.shape == (n, 3) and features.shape == (n, 256)
        expected = torch.softmax(torch.from_numpy(logits) / 2.5, 1).numpy()
        assert np.abs(probs - expected).max() < 1e-5  # the graph's probabilities are the calibrated ones

    onnx, eager = Predictor(run), Predictor(run, backend="torch")
    assert onnx.backend == "onnx"
    x = _inputs(8, seed=2)
    assert np.abs(onnx.probabilities(x) - eager.probabilities(x)).max() < 1e-5
    onnx.calibration = eager.calibration = None  # what `lungct calibrate` does to get raw probabilities
    raw = onnx.probabilities(x)
    assert np.abs(raw - eager.probabilities(x)).max() < 1e-5
    assert not np.allclose(raw, Predictor(run).probabilities(x), atol=1e-3)  # calibration did change them


def test_isotonic_calibration_is_applied_outside_the_graph(cnn_run, tmp_path):
    iso = {"method": "isotonic", "x": [[0.0, 0.5, 1.0]] * 3, "y": [[0.1, 0.3, 0.9]] * 3}
    run = _copy(cnn_run, tmp_path, iso)
    info = export_onnx(run)
    assert info["calibration"]["in_graph"] is False and "numpy" in info["calibration"]["probabilities"]
    onnx, eager = Predictor(run), Predictor(run, backend="torch")
    assert onnx.backend == "onnx"
    x = _inputs(6, seed=3)
    for tta in (False, True):
        onnx.tta = eager.tta = tta
        assert np.abs(onnx.probabilities(x) - eager.probabilities(x)).max() < 1e-5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run", "/nonexistent/run"], "run directory not found"),
        (["--format", "tflite"], "unknown export format 'tflite'; supported: onnx"),
        (["--opset", "7"], "Invalid value for '--opset'"),
    ],
)
def test_export_errors_are_one_line(cnn_run, capsys, args, message):
    argv = ["export", *args] if args[0] == "--run" else ["export", "--run", str(cnn_run), *args]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (cnn_run / "model.onnx").exists()


def test_export_of_an_unfinished_run_fails(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main(["export", "--run", str(tmp_path)]) == 1
    assert "not a finished run: model.json is missing" in capsys.readouterr().err
