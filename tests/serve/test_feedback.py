"""Feedback through the API: recorded beside its prediction, refused for unknown ids and labels, exported as a
dataset that trains; slices are kept only when the deployment asks, and never with identifying tags."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lungct.cli import main
from lungct.data.labels import normalise_label
from lungct.monitoring.feedback import export_feedback
from lungct.serve import ServeSettings, create_app
from lungct.training import train
from tests.conftest import synthetic_slice, tiny_config
from tests.dicom.dicom_factory import PRIVATE_VALUES, ct_dataset, hu_from_grey, to_bytes


def predict(client: TestClient, path: Path) -> dict:
    r = client.post("/v1/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def test_feedback_is_recorded_refused_when_wrong_exported_and_trains(onnx_run, slice_dir, tmp_path):
    log, kept = tmp_path / "predictions.sqlite", tmp_path / "kept"
    app = create_app(ServeSettings(run=onnx_run, log_path=log, keep_feedback_images=kept))
    slices = sorted(slice_dir.rglob("*.png"))
    with TestClient(app) as client:
        answers = [predict(client, path) for path in slices]
        assert all(len(a["prediction_id"]) == 32 for a in answers)
        batch = client.post(
            "/v1/predict/batch", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in slices[:2]]
        )
        assert all(len(item["prediction_id"]) == 32 for item in batch.json()["results"])
        for path, answer in zip(slices, answers, strict=True):
            truth = normalise_label(path.parent.name)
            r = client.post("/v1/feedback", json={"prediction_id": answer["prediction_id"], "label": truth})
            assert r.status_code == 201, r.text
            receipt = r.json()
            assert receipt["label"] == truth and receipt["predicted"] == answer["label"] and receipt["image_kept"]
        unknown = client.post("/v1/feedback", json={"prediction_id": "0" * 32, "label": "benign"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_prediction"
        wrong = client.post("/v1/feedback", json={"prediction_id": answers[0]["prediction_id"], "label": "dragon"})
        assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_label"
        assert "benign, malignant, normal" in wrong.json()["error"]["message"]
        extra = client.post("/v1/feedback", json={"prediction_id": "x", "label": "benign", "user": "me"})
        assert extra.status_code == 422
        out = tmp_path / "dataset"
        assert main(["feedback", "export", "--log", str(log), "--out", str(out)]) == 0
        first_label = normalise_label(slices[0].parent.name)
        assert first_label != "normal" and (out / first_label / f"{answers[0]['sha256']}.png").is_file()
        # a second opinion on the first slice: the latest feedback is the one exported
        second = {"prediction_id": answers[0]["prediction_id"], "label": "normal", "reason": "second reading"}
        assert client.post("/v1/feedback", json=second).status_code == 201
    with sqlite3.connect(log) as db:
        assert db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == len(slices) + 1

    assert main(["feedback", "export", "--log", str(log), "--out", str(out)]) == 0  # the export again, replaced
    # the relabelled slice is under its new label only (it stayed under the old one too, and a folder source
    # trained on both labels)
    assert sorted(p.parent.name for p in out.rglob(f"{answers[0]['sha256']}.png")) == ["normal"]
    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len({p.read_bytes() for p in slices})
    assert {r["label"] for r in rows} == {"benign", "malignant", "normal"}
    assert all((out / r["path"]).is_file() and r["group"].startswith("upload-") for r in rows)
    first = next(r for r in rows if Path(r["path"]).stem == answers[0]["sha256"])
    assert first["label"] == "normal"

    cfg = tiny_config(out / "manifest.csv")
    cfg.model.arch = "small_cnn"
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 1, 0
    run = train(cfg, tmp_path / "retrained", progress=False)
    assert run.read_summary().status == "complete"


def test_an_export_never_writes_into_a_folder_of_other_files(onnx_run, slice_dir, tmp_path, capsys):
    """It replaced a manifest.csv it had not written and mixed its class folders into a dataset."""
    log, kept = tmp_path / "predictions.sqlite", tmp_path / "kept"
    app = create_app(ServeSettings(run=onnx_run, log_path=log, keep_feedback_images=kept))
    with TestClient(app) as client:
        answer = predict(client, next(slice_dir.rglob("*.png")))
        assert client.post("/v1/feedback", json={"prediction_id": answer["prediction_id"], "label": "normal"})
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "manifest.csv").write_text("path,label,group\n/data/important.png,benign,g1\n")
    assert main(["feedback", "export", "--log", str(log), "--out", str(theirs)]) == 1
    err = capsys.readouterr().err
    assert "holds files but no feedback export" in err and len(err.strip().splitlines()) == 1, err
    assert [p.name for p in theirs.iterdir()] == ["manifest.csv"]
    assert "important.png" in (theirs / "manifest.csv").read_text()


def test_without_kept_slices_feedback_is_for_monitoring_only(onnx_run, slice_dir, tmp_path):
    log = tmp_path / "predictions.sqlite"
    app = create_app(ServeSettings(run=onnx_run, log_path=log))
    with TestClient(app) as client:
        answer = predict(client, next(slice_dir.rglob("*.png")))
        r = client.post("/v1/feedback", json={"prediction_id": answer["prediction_id"], "label": "normal"})
        assert r.status_code == 201 and r.json()["image_kept"] is False
    with pytest.raises(Exception, match="monitoring only"):
        export_feedback(log, tmp_path / "out")


def test_without_a_log_there_is_no_prediction_id_and_feedback_is_503(onnx_run, tmp_path):
    app = create_app(ServeSettings(run=onnx_run, log_predictions=False))
    with TestClient(app) as client:
        answer = predict(client, _png(tmp_path))
        assert "prediction_id" not in answer
        r = client.post("/v1/feedback", json={"prediction_id": "a" * 32, "label": "normal"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_prediction_log"


def test_a_kept_dicom_slice_and_the_log_hold_no_identifying_tag(onnx_run, tmp_path):
    log, kept = tmp_path / "predictions.sqlite", tmp_path / "kept"
    data = to_bytes(ct_dataset(hu_from_grey(synthetic_slice(0, 5, 64))))
    assert b"Doe^Janet" in data  # the upload does carry patient tags
    app = create_app(ServeSettings(run=onnx_run, log_path=log, keep_feedback_images=kept))
    with TestClient(app) as client:
        r = client.post("/v1/predict", files={"file": ("Doe_Janet.dcm", data, "application/dicom")})
        assert r.status_code == 200, r.text
        fb = client.post("/v1/feedback", json={"prediction_id": r.json()["prediction_id"], "label": "benign"})
        assert fb.status_code == 201 and fb.json()["image_kept"]
    (png,) = kept.iterdir()
    assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = png.read_bytes() + log.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("*.sqlite-*"))
    for value in [*PRIVATE_VALUES, "Doe_Janet"]:
        assert value.encode() not in stored, value


def _png(tmp_path: Path) -> Path:
    path = tmp_path / "a.png"
    synthetic_slice(1, 3).save(path)
    return path
