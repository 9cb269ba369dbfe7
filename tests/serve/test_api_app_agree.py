"""The REST API and the web app run one inference service: for the same image they must give the same
prediction (label, probabilities, hash, log row) and refuse the same oversized image."""

from __future__ import annotations

import io
import math

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lungct.app.analysis import analyse_upload, load_app_model
from lungct.contracts import Prediction
from lungct.monitoring.predlog import open_existing_log
from lungct.serve import ServeSettings, create_app
from tests.serve.payloads import png


@pytest.fixture
def both(onnx_run, tmp_path):
    """The API with its default limits and the app's model on the same run, each with its own log."""
    settings = ServeSettings(run=onnx_run, log_path=tmp_path / "api.sqlite")
    with TestClient(create_app(settings)) as client:
        yield client, load_app_model(onnx_run, tmp_path / "app.sqlite")


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def test_api_and_app_give_the_same_prediction(both, tmp_path):
    client, model = both
    data = png(seed=7)
    r = client.post("/v1/predict", files={"file": ("slice.png", data, "image/png")})
    assert r.status_code == 200, r.text
    app_result = analyse_upload(model, data, "slice.png")
    assert "error" not in app_result, app_result["error"]

    api = Prediction.model_validate(r.json())  # the REST spelling: file, label, confidence
    app = Prediction.model_validate({k: app_result[k] for k in ("name", "predicted", "probability", "probabilities")})
    assert app.predicted == api.predicted and app.probability == api.probability
    assert app.probabilities == api.probabilities  # exactly: one decoder, one predictor, one rounding
    assert app_result["sha256"] == api.sha256 and app.name == api.name == "slice.png"

    api_row, app_row = (open_existing_log(tmp_path / f"{n}.sqlite").read()[-1] for n in ("api", "app"))
    assert (api_row["source"], app_row["source"]) == ("api", "app")
    for key in ("sha256", "model_version", "label", "confidence", "probabilities"):
        assert api_row[key] == app_row[key], key


def test_api_and_app_refuse_the_same_image_for_its_pixels(both):
    client, model = both
    api_limits = client.app.state.service.limits
    assert api_limits == model.service.limits.model_copy(update={"max_file_mb": api_limits.max_file_mb})
    side = math.isqrt(api_limits.max_pixels)
    over = _png(side + 1, side)
    r = client.post("/v1/predict", files={"file": ("big.png", over, "image/png")})
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
    assert f"{side + 1}x{side} pixels" in r.json()["error"]["message"]
    app_result = analyse_upload(model, over, "big.png")
    assert app_result == {
        "name": "big.png",
        "error": f"the image is too large ({side + 1}x{side} pixels); the app accepts slices up to {side}x{side}",
    }
