"""`lungct export --opset N`: the file has the opset it is said to have, or the export fails in one line.

The bug: torch's dynamo exporter writes opset 18 at the least; asked for 13 to 17 it tried a down-conversion,
failed with a traceback on stderr, and lungct printed and recorded the opset asked for on an opset-18 file.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from lungct.cli import main
from lungct.export import onnx_export
from lungct.inference import Predictor


def _file_opset(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("opset", [13, 17])
def test_a_low_opset_is_the_file_opset(cnn_run, tmp_path, capfd, opset):
    run = Path(shutil.copytree(cnn_run, tmp_path / "run"))
    assert main(["export", "--run", str(run), "--opset", str(opset)]) == 0
    out, err = capfd.readouterr()
    assert _file_opset(run / "model.onnx") == opset
    assert json.loads((run / "export.json").read_text())["opset"] == opset
    assert f"opset {opset}," in out and "Traceback" not in err and err.strip() == ""
    predictor = Predictor(run)
    assert predictor.backend == "onnx"  # the export is current and ONNX Runtime runs it
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    eager = Predictor(run, backend="torch")
    assert np.abs(predictor.probabilities(x) - eager.probabilities(x)).max() < 1e-5


def test_an_opset_the_exporter_does_not_write_is_one_line_and_keeps_the_model(
    cnn_run, tmp_path, capfd, caplog, monkeypatch
):
    run = Path(shutil.copytree(cnn_run, tmp_path / "run"))
    assert main(["export", "--run", str(run)]) == 0
    before = {name: (run / name).read_bytes() for name in ("model.onnx", "export.json")}
    capfd.readouterr()
    # What every opset below 18 did before: the dynamo exporter, which writes opset 18 whatever it is asked.
    monkeypatch.setattr(onnx_export, "DYNAMO_MIN_OPSET", 13)
    with caplog.at_level(logging.DEBUG):
        assert main(["export", "--run", str(run), "--opset", "13"]) == 1
    out, err = capfd.readouterr()
    assert out == ""
    assert err.strip() == (
        "lungct: error: could not export at opset 13: the exporter (torch.onnx (dynamo)) wrote opset 18; "
        "model.onnx was not changed"
    )
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not (run / "model.onnx.tmp").exists()
    # the failed down-conversion's own warning and traceback stay out of stderr and the log
    assert not [r for r in caplog.records if r.name.startswith(("onnxscript", "torch.onnx"))]
