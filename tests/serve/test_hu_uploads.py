"""The API reads 16-bit HU exports with the server's hu_offset (lungct.data.images; tests/data/test_hu_images.py)."""

from __future__ import annotations

from PIL import Image

from lungct.dicom.hounsfield import LUNG
from tests.data.test_hu_images import chest_hu, save_uint16


def test_the_api_reads_16bit_uploads_with_the_servers_hu_offset(onnx_run, tmp_path):
    """`lungct serve --hu-offset 1024` (LUNGCT_SERVE_HU_OFFSET): a 16-bit HU export gets the probabilities of its
    8-bit lung-window rendering."""
    from fastapi.testclient import TestClient

    from lungct.serve import ServeSettings, create_app

    hu = chest_hu(seed=4)
    export, display = save_uint16(hu, tmp_path / "export.png"), tmp_path / "display.png"
    Image.fromarray(LUNG.apply(hu)).save(display)

    def probabilities(client, path) -> dict:
        answer = client.post("/v1/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
        return answer.json()["probabilities"]

    settings = ServeSettings(run=onnx_run, hu_offset=1024, log_path=tmp_path / "log.sqlite")
    with TestClient(create_app(settings)) as client:
        assert probabilities(client, export) == probabilities(client, display)
    with TestClient(create_app(ServeSettings(run=onnx_run, log_path=tmp_path / "plain.sqlite"))) as client:
        assert probabilities(client, export) != probabilities(client, display)
