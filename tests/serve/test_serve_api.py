"""The endpoints on a real server: results, per-file batch failures, the prediction log, Grad-CAM, concurrency."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from lungct.monitoring.predlog import open_existing_log
from tests.serve.payloads import make_zip, png

CLASSES = {"benign", "malignant", "normal"}


def _slice(slice_dir, folder: str, i: int) -> bytes:
    return (slice_dir / f"{folder} cases" / f"{folder} case ({i}).png").read_bytes()


def test_health_and_model_info(live):
    with live.client() as client:
        health = client.get("/health").json()
        info = client.get("/v1/model").json()
    assert health["status"] == "ok" and health["backend"] == "onnx"
    assert set(info["classes"]) == CLASSES and info["backbone"] == "mobilenetv2_100" and info["input_size"] == 64
    assert info["model_version"] == health["model_version"] and info["model_version"].startswith("run-mobilenetv2_100-")
    assert info["test_metrics"] is None and info["test_metrics_status"].startswith("absent")
    assert info["limits"]["max_batch_files"] == 5


def test_predict_gives_label_calibrated_probabilities_version_latency(live, slice_dir):
    data = _slice(slice_dir, "Malignant", 2)
    with live.client() as client:
        started = time.perf_counter()
        r = client.post("/v1/predict", files={"file": ("scan/Malignant case (2).png", data, "image/png")})
        round_trip_ms = (time.perf_counter() - started) * 1000
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["file"] == "Malignant case (2).png"  # the last path component only
    assert body["label"] in CLASSES and body["confidence"] == body["probabilities"][body["label"]]
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    # the server's own time: positive, and within what the client waited for the whole round trip (in ms, not s)
    assert 0 < body["latency_ms"] <= round_trip_ms and body["backend"] == "onnx" and body["model_version"]


def test_batch_reports_failures_per_file_in_order(live, slice_dir):
    files = [
        ("files", ("a.png", _slice(slice_dir, "Normal", 1), "image/png")),
        ("files", ("text.png", b"not an image", "image/png")),
        ("files", ("empty.png", b"", "image/png")),
        ("files", ("cut.png", png()[:150], "image/png")),
        ("files", ("b.png", _slice(slice_dir, "Bengin", 1), "image/png")),
    ]
    with live.client() as client:
        r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["n_files"], body["n_ok"], body["n_failed"]) == (5, 2, 3)
    results = body["results"]
    assert [x["file"] for x in results] == ["a.png", "text.png", "empty.png", "cut.png", "b.png"]
    assert results[0]["label"] in CLASSES and results[4]["label"] in CLASSES
    assert [x["error"]["code"] for x in results[1:4]] == ["unreadable_image", "empty_file", "unreadable_image"]


def test_batch_zip_names_members_by_file_name(live, slice_dir):
    archive = make_zip(
        {
            "study/one/Normal case (2).png": _slice(slice_dir, "Normal", 2),
            "study/two/x.png": _slice(slice_dir, "Malignant", 3),
            "__MACOSX/study/._x.png": b"resource fork",
            "study/.DS_Store": b"junk",
        }
    )
    with live.client() as client:
        r = client.post(
            "/v1/predict/batch",
            files=[
                ("files", ("scans.zip", archive, "application/zip")),
                ("files", ("c.png", png(seed=5), "image/png")),
            ],
        )
    assert r.status_code == 200, r.text
    assert [x["file"] for x in r.json()["results"]] == ["Normal case (2).png", "x.png", "c.png"]
    assert all(x["label"] in CLASSES for x in r.json()["results"])


def test_prediction_log_rows_hold_no_file_names(live, slice_dir):
    log = open_existing_log(live.log_path)
    before = len(log)
    data = _slice(slice_dir, "Bengin", 3)
    with live.client() as client:
        single = client.post("/v1/predict", files={"file": ("Smith_John_MRN4711.png", data, "image/png")}).json()
        client.post(
            "/v1/predict/batch",
            files=[
                ("files", ("Smith_John_2.png", png(seed=8), "image/png")),
                ("files", ("Smith_John_3.png", b"broken", "image/png")),
            ],
        )
    rows = log.read()[before:]
    assert len(rows) == 2  # the two predictions; the failed file is not a prediction
    row = rows[0]
    assert row["sha256"] == hashlib.sha256(data).hexdigest() == single["sha256"]
    assert row["label"] == single["label"] and row["probabilities"] == single["probabilities"]
    assert row["source"] == "api" and row["model_version"] == single["model_version"]
    assert 0 < row["latency_ms"] <= single["latency_ms"]  # logged as the prediction ends, before the answer
    assert row["embedding"].shape == (1280,) and set(row["stats"]) >= {"mean", "std", "width", "height"}
    stored = b"".join(p.read_bytes() for p in live.log_path.parent.glob(live.log_path.name + "*"))
    assert b"Smith" not in stored and b"MRN4711" not in stored and b".png" not in stored


def test_explain_returns_a_png_overlay(live, slice_dir):
    data = _slice(slice_dir, "Malignant", 4)
    with live.client() as client:
        r = client.post("/v1/explain", files={"file": ("m.png", data, "image/png")})
        j = client.post("/v1/explain?output=json&method=gradcam%2B%2B&target=normal", files={"file": ("m.png", data)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.headers["x-lungct-label"] in CLASSES
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.width > 100 and img.height > 100
    body = j.json()
    assert j.status_code == 200 and body["label"] == "normal" and body["method"] == "gradcam++"
    assert body["file"] == "m.png" and (body["width"], body["height"]) == (48, 48)
    assert base64.b64decode(body["overlay_png_base64"])[:4] == b"\x89PNG"


def test_concurrent_requests_all_succeed(live):
    payloads = [png(seed=i) for i in range(16)]

    def one(data: bytes) -> int:
        with live.client() as client:
            return client.post("/v1/predict", files={"file": ("x.png", data, "image/png")}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, payloads)) == [200] * 16


def test_model_calls_do_not_block_the_event_loop(live, monkeypatch):
    """A prediction held inside its worker thread; /health must still answer meanwhile."""
    service = live.app.state.service
    real_predict = service.predict
    entered, release = threading.Event(), threading.Event()

    def held(items):
        entered.set()
        release.wait(30)
        return real_predict(items)

    def post() -> int:
        with live.client() as other:
            return other.post("/v1/predict", files={"file": ("x.png", png())}).status_code

    monkeypatch.setattr(service, "predict", held)
    with ThreadPoolExecutor(1) as pool, live.client() as client:
        pending = pool.submit(post)
        assert entered.wait(30)
        assert client.get("/health", timeout=20).status_code == 200  # answered while the model call is held
        release.set()
        assert pending.result(timeout=60) == 200


@pytest.mark.parametrize("field", ["file", "files"])
def test_batch_accepts_either_field_name(live, field):
    with live.client() as client:
        r = client.post("/v1/predict/batch", files={field: ("a.png", png(), "image/png")})
    assert r.status_code == 200 and r.json()["n_ok"] == 1
