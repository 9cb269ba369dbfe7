"""Issue 12: bounded explanations, malformed DICOM as 4xx / per-file errors, a verified ONNX export, and a
damaged weights file reported in one line."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper
from PIL import Image

from lungct.cli import main
from lungct.errors import LungCTError
from lungct.inference import Predictor
from lungct.serve import ServeSettings, create_app
from tests.conftest import synthetic_slice
from tests.dicom.dicom_factory import MALFORMED, ct_dataset, hu_from_grey, malformed_dicom, to_bytes
from tests.serve.payloads import make_zip, png

CLASSES = {"benign", "malignant", "normal"}
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoint_last.pt", "predictions.sqlite*"))
    return dest


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def _good_dicom(seed: int = 0) -> bytes:
    return to_bytes(ct_dataset(hu_from_grey(synthetic_slice(seed % 3, seed))))


# -- 1. /v1/explain output is bounded --------------------------------------------------------------------------
def test_explain_of_a_32x20000_png_is_bounded(onnx_run, tmp_path):
    """The overlay was drawn at the upload's aspect: 20 x 20000 px gave a 572 x 466796 px PNG and 10 GB (the
    narrowest image read today is 32 px)."""
    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (20000, 1))  # compresses well: under 1 MB
    data = png(Image.fromarray(ramp, mode="L"))
    for max_side in (None, 256):
        extra = {} if max_side is None else {"explain_max_side": max_side}
        settings = ServeSettings(run=onnx_run, log_path=tmp_path / "log.sqlite", **extra)
        assert settings.explain_max_side == (max_side or 1024)
        with TestClient(create_app(settings)) as client:
            r = client.post("/v1/explain", files={"file": ("tall.png", data, "image/png")})
            j = client.post("/v1/explain?output=json", files={"file": ("tall.png", data, "image/png")})
            limits = client.get("/v1/model").json()["limits"]
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png" and r.headers["x-lungct-label"] in CLASSES
        w, h = _png_size(r.content)
        assert w <= settings.explain_max_side and h <= settings.explain_max_side, (w, h)
        assert j.status_code == 200, j.text
        body = j.json()
        assert (body["width"], body["height"]) == (32, 20000)  # the slice's own size is still reported
        w, h = _png_size(base64.b64decode(body["overlay_png_base64"]))
        assert w <= settings.explain_max_side and h <= settings.explain_max_side, (w, h)
        assert limits["explain_max_side"] == settings.explain_max_side


# -- 2. malformed DICOM ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_dicom_is_a_422_naming_the_problem(live, kind):
    with live.client() as client:
        r = client.post("/v1/predict", files={"file": (f"{kind}.dcm", malformed_dicom(kind), "application/dicom")})
        e = client.post("/v1/explain", files={"file": (f"{kind}.dcm", malformed_dicom(kind), "application/dicom")})
        ok = client.post("/v1/predict", files={"file": ("good.dcm", _good_dicom(), "application/dicom")})
    for response in (r, e):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "unreadable_image" and error["message"].startswith(f"{kind}.dcm: ")
        assert MALFORMED[kind] in error["message"] and "traceback" not in response.text.lower()
    assert ok.status_code == 200 and ok.json()["label"] in CLASSES


def test_batch_reports_malformed_dicom_per_file_and_keeps_the_others(live):
    good = {"a.png": png(seed=1), "b.dcm": _good_dicom(2)}
    bad = {f"{kind}.dcm": malformed_dicom(kind) for kind in sorted(MALFORMED)}
    names = ["a.png", "frames.dcm", "b.dcm", "nested.dcm", "slope.dcm"]
    members = {**good, **bad}
    with live.client() as client:
        loose = client.post(
            "/v1/predict/batch", files=[("files", (n, members[n], "application/octet-stream")) for n in names]
        )
        archive = make_zip({f"study/{n}": members[n] for n in names})
        zipped = client.post("/v1/predict/batch", files={"files": ("study.zip", archive, "application/zip")})
    for response in (loose, zipped):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["n_files"], body["n_ok"], body["n_failed"]) == (5, 2, 3)
        results = {x["file"]: x for x in body["results"]}
        assert [x["file"] for x in body["results"]] == names
        assert results["a.png"]["label"] in CLASSES and results["b.dcm"]["label"] in CLASSES
        for kind in MALFORMED:
            error = results[f"{kind}.dcm"]["error"]
            assert (error["code"], error["status"]) == ("unreadable_image", 422)
            assert MALFORMED[kind] in error["message"]


def test_cli_predict_reports_a_malformed_dicom_and_predicts_the_rest(onnx_run, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "1.png").write_bytes(png(seed=3))
    for kind in sorted(MALFORMED):
        (folder / f"2-{kind}.dcm").write_bytes(malformed_dicom(kind))
    (folder / "3.dcm").write_bytes(_good_dicom(4))
    code = main(["predict", "--run", str(onnx_run), str(folder)])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 5
    by_name = {Path(r.get("file") or r["path"]).name: r for r in rows}
    assert by_name["1.png"]["label"] in CLASSES and by_name["3.dcm"]["label"] in CLASSES
    for kind in MALFORMED:
        assert MALFORMED[kind] in by_name[f"2-{kind}.dcm"]["error"]
    assert "Traceback" not in err


# -- 3. the ONNX export is verified --------------------------------------------------------------------------
def test_a_changed_model_onnx_is_not_used(onnx_run, tmp_path):
    run = _copy_run(onnx_run, tmp_path / "run")
    assert Predictor(run).backend == "onnx"
    graph = onnx.load(str(run / "model.onnx"))
    bias = next(t for t in graph.graph.initializer if t.name.endswith("bias") and t.dims == [3])  # the head's
    values = numpy_helper.to_array(bias).copy()
    values[0] += 5.0  # favours one class: a different model behind an unchanged export.json
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(graph, str(run / "model.onnx"))

    auto = Predictor(run)
    assert auto.backend == "torch"
    assert "does not match export.json" in auto.backend_reason and "sha256" in auto.backend_reason
    with pytest.raises(LungCTError, match=r"cannot use the ONNX backend: model\.onnx does not match") as info:
        Predictor(run, backend="onnx")
    assert "\n" not in str(info.value)


def test_an_export_without_a_recorded_sha256_is_not_trusted(onnx_run, tmp_path):
    run = _copy_run(onnx_run, tmp_path / "run")
    info = json.loads((run / "export.json").read_text())
    assert len(info["sha256"]) == 64
    del info["sha256"]
    (run / "export.json").write_text(json.dumps(info))
    assert "records no sha256" in Predictor(run).backend_reason
    with pytest.raises(LungCTError, match="records no sha256"):
        Predictor(run, backend="onnx")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\xae\x95 not text", "export.json is damaged"),
        (b"[1, 2]", "export.json is damaged: it is not the JSON object"),
        (None, "model.onnx has no export.json beside it"),
    ],
    ids=["binary", "a-list", "missing"],
)
def test_a_damaged_or_missing_export_json_is_one_line(onnx_run, tmp_path, capsys, content, needle):
    run = _copy_run(onnx_run, tmp_path / "run")
    if content is None:
        (run / "export.json").unlink()
    else:
        (run / "export.json").write_bytes(content)
    with pytest.raises(LungCTError, match=needle) as info:
        Predictor(run, backend="onnx")
    assert "\n" not in str(info.value)


def test_an_int8_export_whose_accuracy_check_is_not_a_number_is_refused(onnx_run, tmp_path):
    from lungct.inference.onnx_runtime import file_sha256, int8_status, weights_hash
    from lungct.run import RunDir, model_version

    run = RunDir(_copy_run(onnx_run, tmp_path / "run"))
    version = model_version(run)
    (run.path / "model.int8.onnx").write_bytes(b"a graph")
    info = {"weights_hash": weights_hash(version), "sha256": file_sha256(run.path / "model.int8.onnx")}
    (run.path / "export.int8.json").write_text(json.dumps({**info, "check": {"balanced_accuracy_drop": "x"}}))
    info, reason = int8_status(run, version, 0.01)
    assert info is None and reason.startswith("export.int8.json is damaged: its accuracy check is not a number")


def test_an_export_for_another_input_size_or_class_count_is_refused(onnx_run, tmp_path):
    run = _copy_run(onnx_run, tmp_path / "run")
    card = json.loads((run / "model.json").read_text())
    assert card["preprocess"]["input_size"] == 64
    card["preprocess"]["input_size"] = 48  # the run's model now wants 48 px; the graph was exported at 64
    (run / "model.json").write_text(json.dumps(card))
    auto = Predictor(run)
    assert auto.backend == "torch" and "model.json needs N x 3 x 48 x 48" in auto.backend_reason
    with pytest.raises(LungCTError, match=r"takes input N x 3 x 64 x 64, but model.json needs N x 3 x 48 x 48"):
        Predictor(run, backend="onnx")

    card["preprocess"]["input_size"] = 64
    card["classes"] = [*card["classes"], "other"]
    (run / "model.json").write_text(json.dumps(card))
    with pytest.raises(LungCTError, match=r"gives 3 class scores, but model\.json has 4 classes"):
        Predictor(run, backend="onnx")


def test_renaming_the_run_folder_keeps_the_export(onnx_run, tmp_path):
    run = _copy_run(onnx_run, tmp_path / "renamed-run")
    predictor = Predictor(run)
    assert predictor.model_version.startswith("renamed-run-mobilenetv2_100-")
    assert predictor.backend == "onnx", predictor.backend_reason
    assert "matches" in predictor.backend_reason
    assert Predictor(run, backend="onnx").backend == "onnx"


# -- 4. a damaged weights file -------------------------------------------------------------------------------
def test_truncated_weights_are_one_line_naming_the_file(onnx_run, tmp_path, capsys):
    run = _copy_run(onnx_run, tmp_path / "run")
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code = main(["predict", "--run", str(run), str(onnx_run.parent / "data" / "Normal cases")])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(weights) in lines[0] and "damaged or truncated" in lines[0] and "Traceback" not in err
    with pytest.raises(LungCTError, match=r"model\.safetensors is damaged or truncated"):  # what serve reports
        create_app(ServeSettings(run=run, log_predictions=False))
