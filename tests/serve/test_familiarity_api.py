"""`lungct familiarity` fits a run's reference; then `lungct predict` and the API say of each input whether it is
like the training images (lungct.inference.familiarity)."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from lungct.cli import main
from lungct.inference import Predictor
from lungct.inference.familiarity import FAMILIARITY_FILE
from lungct.monitoring.drift_report import drift_report
from lungct.monitoring.predlog import open_existing_log
from lungct.serve import ServeSettings, create_app
from tests.conftest import synthetic_slice


def test_lungct_familiarity_reaches_predict_and_the_api(onnx_run, tmp_path, capsys):
    run = shutil.copytree(onnx_run, tmp_path / "run")
    assert main(["familiarity", "--run", str(run), "--percentile", "100"]) == 1
    assert "--percentile must be at least 50 and below 100, got 100" in capsys.readouterr().err

    assert main(["familiarity", "--run", str(run), "-q"]) == 0
    out = capsys.readouterr().out
    assert "unfamiliar at the 99th validation percentile: train " in out and (run / FAMILIARITY_FILE).is_file()

    image = tmp_path / "slice.png"
    synthetic_slice(0, 4242).save(image)
    assert main(["predict", "--run", str(run), str(image)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(line["familiar"], bool) and line["familiar"] == (line["novelty"] <= 1)

    predictor = Predictor(run)
    pre = predictor.card.preprocess
    features = predictor.probabilities_and_features(pre.to_array(pre.load(str(image)))[None])[1]
    assert line["novelty"] == pytest.approx(predictor.familiarity.novelty(features)[0], abs=1e-3)

    with TestClient(create_app(ServeSettings(run=run, log_path=tmp_path / "log.sqlite"))) as client:
        answer = client.post("/v1/predict", files={"file": ("slice.png", image.read_bytes(), "image/png")}).json()
    assert (answer["familiar"], answer["novelty"]) == (line["familiar"], line["novelty"])

    # the prediction log keeps it, and the drift report says which share of recent inputs was unfamiliar
    log = open_existing_log(tmp_path / "log.sqlite")
    assert [row["novelty"] for row in log.read()] == [answer["novelty"]]
    log.close()
    report = drift_report(run, tmp_path / "log.sqlite", tmp_path / "drift", progress=False)
    assert report["unfamiliar"] == {"rows_with_novelty": 1, "share": 0.0 if answer["familiar"] else 1.0}


def test_a_run_without_a_reference_says_nothing_of_familiarity(onnx_run, tmp_path, capsys):
    image = tmp_path / "slice.png"
    synthetic_slice(1, 4343).save(image)
    assert main(["predict", "--run", str(onnx_run), str(image)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "familiar" not in line and "novelty" not in line
