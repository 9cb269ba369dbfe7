"""Issue 7 through the API: real IQ-OTH/NCCD slices wrapped as DICOM with patient tags predict end to end,
singly and as a zip batch, and no tag value reaches a response or the prediction log."""

from __future__ import annotations

import base64
import json

from PIL import Image

from lungct.monitoring.predlog import open_existing_log
from tests.conftest import IQ_OTH, needs_shared
from tests.dicom.dicom_factory import PRIVATE_VALUES, write_study
from tests.serve.payloads import make_zip

FILES = [
    "Malignant cases/Malignant case (100).jpg",
    "Normal cases/Normal case (100).jpg",
    "Bengin cases/Bengin case (10).jpg",
]


def _no_patient_data(blob: bytes) -> None:
    text = blob.decode("latin-1").lower()
    for value in PRIVATE_VALUES:
        assert value.lower() not in text, f"patient data {value!r} leaked"


@needs_shared
def test_dicom_study_predicts_through_the_api_without_leaking_tags(live, tmp_path):
    images = [Image.open(IQ_OTH / f).convert("L") for f in FILES]
    paths = write_study(tmp_path / "Doe_Janet", images)
    assert PRIVATE_VALUES[0].encode() in paths[0].read_bytes()  # the files do carry the tags
    with live.client() as client:
        single = client.post("/v1/predict", files={"file": (paths[0].name, paths[0].read_bytes(), "application/dicom")})
        archive = make_zip({f"Doe_Janet/series/{p.name}": p.read_bytes() for p in paths})
        batch = client.post("/v1/predict/batch", files={"files": ("study.zip", archive, "application/zip")})
        loose = client.post(
            "/v1/predict/batch", files=[("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
        )
        overlay = client.post("/v1/explain?output=json", files={"file": (paths[1].name, paths[1].read_bytes())})
    assert single.status_code == 200, single.text
    assert single.json()["file"] == "IM0000.dcm" and single.json()["label"] in {"benign", "malignant", "normal"}
    for response in (batch, loose):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["n_ok"] == 3 and [r["file"] for r in body["results"]] == ["IM0000.dcm", "IM0001.dcm", "IM0002.dcm"]
    assert batch.json()["results"][0]["probabilities"] == single.json()["probabilities"]
    assert overlay.status_code == 200 and overlay.json()["file"] == "IM0001.dcm"
    for response in (single, batch, loose):
        _no_patient_data(response.content)
        _no_patient_data(str(response.headers).encode())
    explained = overlay.json()
    png = base64.b64decode(explained.pop("overlay_png_base64"))  # base64 text can spell "Doe" by chance
    _no_patient_data(json.dumps(explained).encode())
    assert not any(v.encode() in png for v in PRIVATE_VALUES)
    rows = open_existing_log(live.log_path).read()
    _no_patient_data(json.dumps([{k: v for k, v in r.items() if k != "embedding"} for r in rows]).encode())
    # the raw database files too (WAL included); only values long enough not to occur in float16 bytes by chance
    raw = b"".join(p.read_bytes() for p in live.log_path.parent.glob(live.log_path.name + "*"))
    assert not any(v.encode() in raw for v in PRIVATE_VALUES if len(v) >= 6)
