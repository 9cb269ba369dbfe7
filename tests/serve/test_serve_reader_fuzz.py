"""The API maps every reader failure to a 4xx JSON answer: mutated PNG, JPEG, TIFF, BMP and DICOM files (the
inputs of tests/data/test_reader_fuzz.py) sent to /v1/predict never give a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from lungct.serve import ServeSettings, create_app
from tests.data.test_reader_fuzz import FUZZ, dicom_base, image_bases, mutated_dicoms, mutated_images

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
EXAMPLES = 200


def test_mutated_files_sent_to_the_api_get_200_or_a_4xx(onnx_run, tmp_path):
    settings_ = ServeSettings(run=onnx_run, log_path=tmp_path / "log.sqlite")
    statuses: list[int] = []
    with TestClient(create_app(settings_), raise_server_exceptions=False) as client:
        for name, data in [*image_bases().items(), ("ct.dcm", dicom_base())]:
            r = client.post("/v1/predict", files={"file": (name, data, "application/octet-stream")})
            assert r.status_code == 200, (name, r.text)

        @settings(FUZZ, max_examples=EXAMPLES)
        @given(
            case=st.one_of(mutated_images(), mutated_dicoms().map(lambda d: ("ct.dcm", d))),
            ctype=st.sampled_from(["", "application/octet-stream", "image/png", "application/dicom"]),
        )
        def check(case: tuple[str, bytes], ctype: str) -> None:
            name, data = case
            r = client.post(
                "/v1/predict", files={"file": (name, data, ctype or None)} if ctype else {"file": (name, data)}
            )
            statuses.append(r.status_code)
            assert r.status_code < 500, (name, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/json")
            if r.status_code != 200:
                error = r.json()["error"]
                assert error["code"] in {"unreadable_image", "image_too_large", "empty_file", "too_many_pixels"}, error
                assert "\n" not in error["message"] and "Traceback" not in error["message"]

        check()
    assert len(statuses) >= EXAMPLES
    assert 200 in statuses and 422 in statuses  # both outcomes were exercised
