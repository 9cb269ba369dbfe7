"""`lungct export --quantize int8`: a QDQ graph checked against float on the test part, refused when it costs
balanced accuracy, and served only while its check holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from lungct.cli import main
from lungct.errors import LungCTError
from lungct.export import export_onnx
from lungct.export.quantize import _read_batch, calibration_paths, quantize_graph, quantize_run, sensitive_nodes
from lungct.inference import Predictor
from lungct.inference.onnx_runtime import INT8_EXPORT_FILE, INT8_ONNX_FILE
from lungct.run import RunDir
from lungct.training import train
from tests.conftest import tiny_config, write_dataset


@pytest.fixture(scope="module")
def float_run(tmp_path_factory) -> Path:
    """small_cnn trained until it separates the synthetic classes, exported to float ONNX."""
    root = tmp_path_factory.mktemp("int8")
    cfg = tiny_config(write_dataset(root / "data", per_class=10))
    cfg.model.arch = "small_cnn"
    cfg.split.mode = "random"
    cfg.train.phase1.epochs, cfg.train.phase1.lr, cfg.train.phase2.epochs = 12, 3e-3, 0
    run = train(cfg, root / "run", progress=False).path
    export_onnx(run)
    return run


@pytest.fixture
def run(float_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(float_run, out)
    return out


def test_cli_writes_an_int8_graph_with_its_check_against_float(run, capsys):
    assert main(["export", "--run", str(run), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "INT8 against float on the test part" in out and "labels agree on" in out
    info = json.loads((run / INT8_EXPORT_FILE).read_text())
    check = info["check"]
    assert check["part"] == "test" and check["n"] > 0 and check["balanced_accuracy_drop"] <= 0.01
    assert {"accuracy", "balanced_accuracy"} <= set(check["metrics"])
    assert all(len(m["ci95"]) == 2 for m in check["metrics"].values())
    graph = onnx.load(str(run / INT8_ONNX_FILE)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # really quantized
    kept = set(info["quantization"]["kept_float"])
    assert {n.name for n in graph.node if n.op_type in ("Gemm", "Softmax")} <= kept  # the head stays float


def test_the_int8_graph_is_served_and_predicts_like_float(run, float_run):
    quantize_run(run, n_resamples=50)
    int8, fp = Predictor(run), Predictor(run, precision="float")
    assert (int8.precision, int8.backend) == ("int8", "onnx") and fp.precision == "float"
    assert INT8_ONNX_FILE in int8.backend_reason
    images = sorted((float_run.parent / "data").rglob("*.png"))
    assert len(images) == 30
    a = np.array([list(r["probabilities"].values()) for r in int8.predict(images)])
    b = np.array([list(r["probabilities"].values()) for r in fp.predict(images)])
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.9 and np.abs(a - b).max() < 0.5


def test_a_run_without_a_held_out_part_is_refused_before_the_float_export(run, capsys):
    """A fold ensemble made without --within has no test or val part: the INT8 check has nothing to run on, so
    `export --quantize int8` says so first (it exported float, then failed)."""
    (run / "model.onnx").unlink()
    split = (run / "split.csv").read_text().splitlines()
    (run / "split.csv").write_text("\n".join(line for line in split if line.endswith((",train", ",part"))) + "\n")
    assert main(["export", "--run", str(run), "--quantize", "int8"]) == 1
    err = capsys.readouterr().err
    assert "has no test or validation part in split.csv to check an INT8 model on" in err
    assert len(err.strip().splitlines()) == 1 and not (run / "model.onnx").exists()


def test_a_calibration_folder_without_images_is_refused_before_the_float_export(run, tmp_path, capsys):
    """It was found out only after the float export had rewritten model.onnx."""
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "slice.webp").write_bytes(b"RIFF")
    before = (run / "model.onnx").read_bytes()
    argv = ["export", "--run", str(run), "--quantize", "int8", "--int8-calibration-folder", str(odd)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"lungct: error: no images in the calibration folder {odd}" and captured.out == ""
    assert (run / "model.onnx").read_bytes() == before


def test_a_run_folder_is_no_calibration_folder(run):
    """Its only images are the run's plots (curves.png): INT8 was calibrated on a training curve."""
    with pytest.raises(LungCTError, match=f"the calibration folder {run} is a run; give a folder of CT slices"):
        calibration_paths(RunDir(run), 8, folder=run)


def test_a_broken_calibration_set_is_refused_and_nothing_is_written(run, tmp_path):
    flat = tmp_path / "flat"  # slices with almost no structure: every activation range collapses
    flat.mkdir()
    for i in range(8):
        img = Image.new("L", (48, 48), 60)
        img.putpixel((i, i), 61)  # one pixel apart from blank (a blank image is not read at all)
        img.save(flat / f"{i}.png")
    with pytest.raises(LungCTError, match=r"INT8 refused: balanced accuracy .* drops by"):
        quantize_run(run, calibration_folder=flat, n_resamples=50)
    assert not (run / INT8_ONNX_FILE).exists() and not (run / INT8_EXPORT_FILE).exists()
    blank = tmp_path / "blank"
    blank.mkdir()
    Image.new("L", (48, 48), 60).save(blank / "0.png")
    with pytest.raises(LungCTError, match="none of the INT8 calibration images could be read"):
        quantize_run(run, calibration_folder=blank, n_resamples=50)
    assert not (run / INT8_ONNX_FILE).exists() and not (run / INT8_EXPORT_FILE).exists()
    with pytest.raises(LungCTError, match=r"cannot serve INT8: no model\.int8\.onnx"):
        Predictor(run, precision="int8")


def test_serving_refuses_an_int8_model_over_its_margin_and_auto_falls_back_to_float(run):
    quantize_run(run, n_resamples=50)
    info_path = run / INT8_EXPORT_FILE
    info = json.loads(info_path.read_text())
    info["check"]["balanced_accuracy_drop"] = 0.05  # as if the export had measured a 5-point drop
    info_path.write_text(json.dumps(info))
    with pytest.raises(LungCTError, match=r"refused: .*0\.050 below float's, over the 0\.01 margin"):
        Predictor(run, precision="int8")
    assert Predictor(run, precision="int8", int8_max_drop=0.1).precision == "int8"
    fallback = Predictor(run)
    assert (fallback.precision, fallback.backend) == ("float", "onnx")


def test_int8_goes_stale_with_the_weights_and_needs_a_float_export(run):
    quantize_run(run, n_resamples=50)
    (run / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 2.0}))
    with pytest.raises(LungCTError, match="stale"):
        Predictor(run, precision="int8")
    with pytest.raises(LungCTError, match="INT8 starts from the float export"):
        quantize_run(run)


def test_stem_and_head_are_the_sensitive_nodes(float_run):
    graph = onnx.load(str(float_run / "model.onnx")).graph
    kept = sensitive_nodes(float_run / "model.onnx")
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert convs[0] in kept and not set(convs[1:]) & set(kept)
    assert graph.node[-1].name in kept  # the softmax at the end


def test_nodes_named_also_float_stay_float(float_run, tmp_path):
    src = float_run / "model.onnx"
    convs = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv"]
    batch = _read_batch(RunDir(float_run), calibration_paths(RunDir(float_run), 8))
    quantized_inputs = {}
    for also in ((), (convs[1],)):
        kept = quantize_graph(src, tmp_path / "int8.onnx", batch, also_float=also)
        assert (convs[1] in kept) == bool(also)
        graph = onnx.load(str(tmp_path / "int8.onnx")).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        conv = next(n for n in graph.node if n.name == convs[1])
        quantized_inputs[also] = bool(set(conv.input) & dequantized)
    assert quantized_inputs == {(): True, (convs[1],): False}
