"""Request batching through the real server, INT8/batching/explain facts on /v1/model, and /v1/explain's 501
on an install that cannot explain."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.testclient import TestClient

from lungct.serve import ServeSettings, create_app
from tests.serve.payloads import png


def test_concurrent_requests_share_model_calls_and_each_gets_its_own_answer(live):
    service = live.app.state.service
    assert service.batcher is not None  # batching is on by default
    uploads = [(f"slice{i}.png", png(seed=i)) for i in range(36)]
    # the answer for each upload on its own, straight from the service (no HTTP, no batching)
    expected = {
        hashlib.sha256(data).hexdigest(): service.predict([service.decode(name, data)])[0].probabilities
        for name, data in uploads
    }
    before = service.batcher.batches, service.batcher.items

    def post(upload):
        with live.client() as client:
            return client.post("/v1/predict", files={"file": (upload[0], upload[1], "image/png")})

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(post, uploads))
    for (name, data), r in zip(uploads, responses, strict=True):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["file"] == name and body["sha256"] == hashlib.sha256(data).hexdigest()
        want = expected[body["sha256"]]
        assert body["probabilities"].keys() == want.keys()
        assert np.allclose(list(body["probabilities"].values()), list(want.values()), atol=1e-5), name
    with live.client() as client:
        batching = client.get("/v1/model").json()["batching"]
    assert batching["enabled"] and batching["max_size"] == 16
    assert batching["requests"] - before[1] == len(uploads)
    assert 0 < batching["batches"] - before[0] <= len(uploads)


def test_a_gathered_batch_runs_in_model_calls_of_model_batch_size_with_one_log_write(onnx_run, tmp_path):
    from lungct.inference.service import InferenceService
    from lungct.monitoring.predlog import PredictionLog

    service = InferenceService(onnx_run, model_batch_size=4)
    service.log = log = PredictionLog(tmp_path / "log.sqlite")
    calls: list[int] = []
    writes: list[int] = []
    forward, record_many = service.predictor.probabilities_and_features, log.record_many
    service.predictor.probabilities_and_features = lambda batch: calls.append(len(batch)) or forward(batch)
    log.record_many = lambda rows, source: writes.append(len(rows)) or record_many(rows, source=source)
    uploads = [(f"s{i}.png", png(seed=i)) for i in range(10)]
    try:
        decoded = [service.decode(name, data) for name, data in uploads]
        chunked = service.predict(decoded)
        one_by_one = [service.predict([d])[0] for d in decoded]
        assert calls == [4, 4, 2] + [1] * 10 and writes == [10] + [1] * 10
        for a, b in zip(chunked, one_by_one, strict=True):  # each slice keeps its own answer in the chunking
            assert a.name == b.name and a.sha256 == b.sha256
            assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)
        assert [row["prediction_id"] for row in log.read()[:10]] == [p.prediction_id for p in chunked]
    finally:
        service.close()


def test_without_batching_each_request_is_its_own_call(onnx_run, tmp_path):
    app = create_app(ServeSettings(run=onnx_run, log_path=tmp_path / "log.sqlite", batching=False))
    with TestClient(app) as client:
        assert client.post("/v1/predict", files={"file": ("a.png", png(), "image/png")}).status_code == 200
        info = client.get("/v1/model").json()
    assert info["batching"] == {
        "enabled": False,
        "max_size": 16,
        "wait_ms": 2.0,
        "model_batch_size": 4,
        "batches": 0,
        "requests": 0,
    }
    assert info["precision"] == "float" and info["explain_available"] is True


def test_explain_answers_501_naming_the_extra_when_this_install_cannot_explain(onnx_run, tmp_path, monkeypatch):
    import lungct.serve.service as wiring

    monkeypatch.setattr(wiring, "explain_unavailable", lambda: "explanations need PyTorch: pip install 'lungct[train]'")
    app = create_app(ServeSettings(run=onnx_run, log_path=tmp_path / "log.sqlite"))
    with TestClient(app) as client:
        r = client.post("/v1/explain", files={"file": ("a.png", png(), "image/png")})
        assert r.status_code == 501
        assert r.json()["error"]["code"] == "explain_unavailable" and "lungct[train]" in r.json()["error"]["message"]
        assert client.post("/v1/predict", files={"file": ("a.png", png(), "image/png")}).status_code == 200
        assert client.get("/v1/model").json()["explain_available"] is False
