"""`lungct dicomweb` against Orthanc's DICOMweb plugin: WADO-RS retrieve, predict, STOW-RS store back
(acceptance 2), with HTTP basic authentication from the environment only."""

from __future__ import annotations

import json

import pydicom
import pytest

from lungct.cli import main
from tests.pacs.conftest import (
    PASSWORD,
    USER,
    assert_no_identifiers,
    dciodvfy_errors,
    free_port,
    needs_orthanc,
    predict_series_lines,
    sop_id,
    sr_values,
)


@needs_orthanc
def test_dicomweb_round_trip(orthanc_factory, pacs_run, ct_series, capsys, monkeypatch, tmp_path):
    orthanc = orthanc_factory(free_port())
    study_id = orthanc.upload(ct_series)
    study_uid = str(pydicom.dcmread(ct_series[0]).StudyInstanceUID)
    argv = ["dicomweb", "--url", orthanc.dicomweb_url, "--study", study_uid, "--run", str(pacs_run),
            "--state", str(tmp_path / "state"), "--out", str(tmp_path / "out"), "--wait", "5"]  # fmt: skip
    for name in ("LUNGCT_DICOMWEB_USER", "LUNGCT_DICOMWEB_PASSWORD", "LUNGCT_DICOMWEB_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    # without credentials Orthanc answers 401: one line naming the variables to set
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "HTTP 401" in err and "LUNGCT_DICOMWEB_USER" in err

    monkeypatch.setenv("LUNGCT_DICOMWEB_USER", USER)
    monkeypatch.setenv("LUNGCT_DICOMWEB_PASSWORD", PASSWORD)
    assert main(argv) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    summary = json.loads(out.splitlines()[-1])
    assert summary == {"instances": len(ct_series), "other": 0, "refused": 0, "series": 1, "delivered": 2,
                       "waiting": 0}  # fmt: skip
    assert PASSWORD not in out + err
    assert_no_identifiers(out + err, "lungct dicomweb's output")

    found = orthanc.instances_by_modality(study_id)
    assert len(found["SR"]) == 1 and len(found["OT"]) == 1
    sr_path = orthanc.download(found["SR"][0], tmp_path / "sr.dcm")
    slices, study = predict_series_lines(capsys, pacs_run, ct_series[0].parent)
    values = sr_values(sr_path)
    assert values["score"] == pytest.approx(study["score"], abs=1e-6) and values["decision"] == study["label"]
    by_id = {line["id"]: line for line in slices}
    for uid, probabilities in values["slices"].items():
        assert probabilities == pytest.approx(by_id[sop_id(uid)]["probabilities"], abs=1e-6)
    assert dciodvfy_errors(sr_path) == []
    assert pydicom.dcmread(sr_path).StudyInstanceUID == study_uid

    # the same study again: its own results are skipped, and the new ones carry the same UIDs (stored once)
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["other"] == 2 and summary["delivered"] == 2
    again = orthanc.instances_by_modality(study_id)
    assert sorted(again["SR"]) == sorted(found["SR"]) and sorted(again["OT"]) == sorted(found["OT"])
