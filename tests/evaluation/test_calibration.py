"""Calibration: temperature scaling must repair a deliberately over-confident model; runs use what was fitted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lungct.cli import main
from lungct.errors import LungCTError
from lungct.evaluation.calibrate import calibrate_run
from lungct.evaluation.metrics import calibration_metrics
from lungct.inference import Predictor
from lungct.inference.calibration import fit_calibrator, fit_temperature, load_calibration
from lungct.training import train
from tests.conftest import tiny_config


def overconfident(n: int, sharpen: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) (so z is calibrated), predictions softmax(sharpen * z): over-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.0, (n, 3))
    p_true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in p_true])
    sharp = np.exp(sharpen * z)
    return y, sharp / sharp.sum(1, keepdims=True)


def test_temperature_scaling_lowers_nll_and_ece_of_an_overconfident_model():
    y_fit, p_fit = overconfident(2000, seed=1)
    y_test, p_test = overconfident(2000, seed=2)
    scaler = fit_temperature(y_fit, p_fit)
    assert 2.4 < scaler.temperature < 3.6  # recovers the sharpening factor
    before, after = calibration_metrics(y_test, p_test), calibration_metrics(y_test, scaler.apply(p_test))
    assert after["nll"] < before["nll"] - 0.1
    assert after["ece"] < before["ece"] / 2
    assert after["brier"] < before["brier"]
    assert (scaler.apply(p_test).argmax(1) == p_test.argmax(1)).all()  # ranking and decisions unchanged


def test_a_calibrated_model_keeps_temperature_near_one():
    y, p = overconfident(3000, sharpen=1.0, seed=3)
    assert 0.85 < fit_temperature(y, p).temperature < 1.15


def test_isotonic_lowers_ece_on_held_out_data():
    y_fit, p_fit = overconfident(3000, seed=4)
    y_test, p_test = overconfident(3000, seed=5)
    iso = fit_calibrator(y_fit, p_fit, "isotonic")
    calibrated = iso.apply(p_test)
    np.testing.assert_allclose(calibrated.sum(1), 1.0)
    assert calibration_metrics(y_test, calibrated)["ece"] < calibration_metrics(y_test, p_test)["ece"] / 2


def test_mce_is_at_least_ece_and_unknown_method_is_refused():
    y, p = overconfident(500)
    m = calibration_metrics(y, p)
    assert m["mce"] >= m["ece"] > 0
    with pytest.raises(LungCTError, match="unknown calibration method"):
        fit_calibrator(y, p, "platt-ish")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fake_pretrained):
    from tests.conftest import write_dataset

    root = tmp_path_factory.mktemp("cal")
    data = write_dataset(root / "data")
    return train(tiny_config(data, fake_pretrained), root / "run", progress=False).path


def test_predictor_applies_the_saved_temperature(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    batch = torch.rand(4, 3, 32, 32)
    raw = Predictor(run).probabilities(batch)
    (run / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 2.0}))
    calibrated = Predictor(run).probabilities(batch)
    expected = np.exp(np.log(raw) / 2.0)
    np.testing.assert_allclose(calibrated, expected / expected.sum(1, keepdims=True), rtol=1e-4)

    (run / "calibration.json").write_text("{broken")
    with pytest.raises(LungCTError, match="damaged"):
        Predictor(run)


def test_calibrate_run_writes_the_calibration_and_diagrams(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["calibrate", "--run", str(run), "-q"]) == 0
    out = capsys.readouterr().out
    assert "temperature" in out and "test: ECE" in out
    saved = load_calibration(run)
    assert saved is not None and saved.temperature > 0
    report = json.loads((run / "calibration" / "report.json").read_text())
    assert set(report["parts"]) == {"val", "test"} and report["fitted_on"] == "val"
    change = report["test_change"]["ece"]
    assert change["ci95"][0] <= change["delta"] <= change["ci95"][1]
    assert "paired group-bootstrap interval" in out
    # On the data it was fitted on, temperature scaling cannot raise the NLL (T = 1 is a candidate).
    assert report["parts"]["val"]["after"]["nll"] <= report["parts"]["val"]["before"]["nll"] + 1e-6
    for png in report["diagrams"].values():
        assert (run / "calibration" / png.split("/")[-1]).is_file()
    report = calibrate_run(run, "isotonic", progress=False)
    assert json.loads((run / "calibration.json").read_text())["method"] == "isotonic"
    capsys.readouterr()
    assert main(["calibrate", "--run", str(run), "--method", "nope", "-q"]) != 0
    assert "'nope' is not one of 'temperature', 'isotonic'" in capsys.readouterr().err


def test_an_unknown_method_is_refused_before_any_prediction(tiny_run, monkeypatch):
    import lungct.evaluation.calibrate as calibrate_module

    def no_prediction(*args, **kwargs):
        raise AssertionError("predicted before checking the method")

    monkeypatch.setattr(calibrate_module, "Predictor", no_prediction)
    with pytest.raises(LungCTError, match="unknown calibration method 'platt'"):
        calibrate_run(tiny_run, "platt", progress=False)


def test_threshold_with_an_unusable_out_fails_before_predicting(tiny_run, tmp_path, monkeypatch):
    """`lungct threshold --out FILE` used to predict both parts, then end in a FileExistsError traceback."""
    import lungct.evaluation.operating_points as op_module

    def no_prediction(*args, **kwargs):
        raise AssertionError("predicted before checking --out")

    monkeypatch.setattr(op_module, "raw_part", no_prediction)
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(LungCTError, match=r"--out .*taken cannot be used: exists and is not a folder"):
        op_module.operating_points(tiny_run, tmp_path / "taken", progress=False)


def test_calibration_and_thresholds_use_the_calibration_part_when_the_split_has_one(tmp_path, fake_pretrained):
    from lungct.data.splits import load_split
    from lungct.evaluation.operating_points import operating_points
    from tests.conftest import write_dataset

    data = write_dataset(tmp_path / "data", per_class=16)
    cfg = tiny_config(data, fake_pretrained)
    cfg.split.calib_fraction = 0.2
    run = train(cfg, tmp_path / "run", progress=False).path
    items = load_split(run / "split.csv")
    assert {i.part for i in items} == {"train", "val", "calib", "test"}
    report = calibrate_run(run, "temperature", progress=False)
    assert report["fitted_on"] == "calib" and set(report["parts"]) == {"calib", "val", "test"}
    assert report["n_fit"] == sum(i.part == "calib" for i in items)
    points = operating_points(run, tmp_path / "op", "malignant", 0.9, None, progress=False)
    assert points["chosen_on"] == "calib" and points["calib"]["n"] == report["n_fit"]


def test_a_run_whose_images_moved_and_data_with_no_readable_image_are_one_line(tiny_run, tmp_path, capsys):
    """Both used to end in a traceback: ImageReadError from the split's moved images, sklearn's on no images."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    split = run / "split.csv"
    data_root = str(tiny_run.parent / "data")
    split.write_text(split.read_text().replace(data_root, str(tmp_path / "moved")))
    for argv in (["evaluate", "--out", tmp_path / "eval"], ["calibrate"], ["threshold", "--out", tmp_path / "op"]):
        code = main([str(a) for a in [*argv, "--run", run, "-q"]])
        err = capsys.readouterr().err
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"cannot read {tmp_path / 'moved'}" in err and "file not found" in err, err

    unreadable = tmp_path / "unreadable" / "Normal cases"
    unreadable.mkdir(parents=True)
    (unreadable / "empty.png").write_bytes(b"")
    code = main(["evaluate", "--run", str(tiny_run), "--data", str(unreadable.parent), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"lungct: error: no readable images in {unreadable.parent} (e.g. {unreadable / 'empty.png'}: empty file)"
    )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[1]", "expected a JSON object, got list"),  # was an AttributeError traceback
        ('{"method": "temperature", "temperature": -3}', "temperature -3.0 is not a positive number"),  # was taken
        ('{"method": "temperature", "temperature": 0}', "temperature 0.0 is not a positive number"),
        ('{"method": "temperature", "temperature": NaN}', "temperature nan is not a positive number"),
        ('{"method": "isotonic", "x": 5, "y": 3}', "one map per class"),  # was a TypeError on the first predict
        ('{"method": "isotonic", "x": [[0, 1]], "y": [[0, 1]]}', "1 isotonic maps for the model's 3 classes"),
        ('{"method": "isotonic", "x": [[0, 1], [0, 1], [0, 1]], "y": [[0, 1], [0, 1], [0]]}', "as many x as y"),
    ],
)
def test_a_damaged_calibration_is_refused_naming_the_file(tmp_path, content, needle):
    """A negative temperature reverses the classes' order, so a damaged one must not be applied."""
    (tmp_path / "calibration.json").write_text(content)
    with pytest.raises(LungCTError, match=r"calibration\.json is damaged") as caught:
        load_calibration(tmp_path, n_classes=3)
    assert needle in str(caught.value)
