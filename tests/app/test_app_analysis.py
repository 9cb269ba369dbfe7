"""Upload handling without a browser: good PNG and DICOM, bad uploads as messages, and what the log keeps."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lungct.app.analysis import MAX_UPLOAD_BYTES, analyse_upload, load_app_model
from lungct.errors import LungCTError
from lungct.monitoring.predlog import open_existing_log
from tests.app.conftest import png_bytes, slice_png
from tests.conftest import synthetic_slice
from tests.dicom.dicom_factory import PATIENT, PRIVATE_VALUES, ct_dataset, hu_from_grey, write

NAME = "Jane Doe slice 0042.png"  # a file name that must never reach the log


@pytest.fixture
def model(app_run, tmp_path):
    return load_app_model(app_run, tmp_path / "log.sqlite")


def _row_text(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k != "embedding"})


def test_png_upload_gives_prediction_overlay_and_one_clean_log_row(model, tmp_path):
    data = slice_png(kind=0)
    result = analyse_upload(model, data, NAME)
    assert "error" not in result, result.get("error")
    assert result["name"] == NAME
    assert result["predicted"] in model.classes == ["benign", "malignant", "normal"]
    assert set(result["probabilities"]) == set(model.classes)
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-4
    assert result["probability"] == max(result["probabilities"].values())
    assert (result["width"], result["height"]) == (48, 48)
    with Image.open(io.BytesIO(result["overlay_png"])) as overlay:
        assert overlay.format == "PNG" and overlay.width > 200  # the drawn figure, not the 48 px slice
    assert result["logged"] is True

    rows = open_existing_log(tmp_path / "log.sqlite").read()
    assert len(rows) == 1
    row = rows[0]
    assert row["source"] == "app"
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["label"] == result["predicted"]
    assert row["model_version"] == model.version and model.version.startswith("run-mobilenetv2_100-")
    assert row["stats"]["width"] == 48
    assert row["embedding"] is not None and row["embedding"].shape == (1280,)  # MobileNetV2's pooled features
    text = _row_text(row)
    assert "Jane" not in text and "0042" not in text and ".png" not in text


def test_dicom_upload_is_windowed_and_its_tags_stay_out_of_the_log(model, tmp_path):
    hu = hu_from_grey(synthetic_slice(1, 3, 48))
    path = write(ct_dataset(hu), tmp_path / "IM0001.dcm")
    data = path.read_bytes()
    assert PATIENT["PatientName"].encode() in data  # the file does carry the patient's name
    for name in ("IM0001.dcm", "upload-without-suffix"):  # by suffix, and by the DICM header
        result = analyse_upload(model, data, name)
        assert "error" not in result, result.get("error")
        assert (result["width"], result["height"]) == (48, 48)
    rows = open_existing_log(tmp_path / "log.sqlite").read()
    assert len(rows) == 2
    text = _row_text(rows[0]) + _row_text(rows[1])
    for value in PRIVATE_VALUES:
        assert value not in text
    assert "IM0001" not in text


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "the file is empty"),
        (b"this is not an image at all, just text", "cannot read this file: not a readable image"),
        (slice_png()[:60], "cannot read this file"),  # a truncated PNG
        (b"\x00" * (MAX_UPLOAD_BYTES + 1), "larger than 50 MB"),
        (png_bytes(Image.new("L", (5000, 4000))), "too large (5000x4000 pixels)"),
        (png_bytes(Image.new("L", (512, 512))), "cannot read this file: blank image (every pixel is 0)"),
    ],
    ids=["empty", "not-an-image", "truncated", "too-many-bytes", "too-many-pixels", "blank"],
)
def test_bad_uploads_become_one_message_and_are_not_logged(model, tmp_path, data, needle):
    result = analyse_upload(model, data, "bad.png")
    assert set(result) == {"name", "error"}
    assert needle in result["error"], result["error"]
    assert "\n" not in result["error"] and "Traceback" not in result["error"]
    assert len(open_existing_log(tmp_path / "log.sqlite")) == 0


def test_app_prediction_matches_the_predictor(model):
    """The app reports the same (calibrated) probabilities as `lungct predict` for the same slice."""
    from lungct.data.transforms import prepare_image
    from lungct.inference import Predictor

    data = slice_png(kind=2, seed=11)
    result = analyse_upload(model, data, "x.png")
    predictor = Predictor(model.run.path)  # what `lungct predict` loads, apart from the app's service
    pre = predictor.card.preprocess
    expected = predictor.probabilities(prepare_image(pre.load_bytes(data), pre).unsqueeze(0))[0]
    got = np.array([result["probabilities"][c] for c in model.classes])
    assert np.allclose(got, expected, atol=1e-5)


def test_calibrated_run_reports_calibrated_probabilities(app_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(app_run, run)
    data = slice_png(kind=1, seed=2)
    plain = load_app_model(run, tmp_path / "a.sqlite")
    raw = analyse_upload(plain, data, "x.png")["probabilities"]
    (run / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 5.0}))
    model = load_app_model(run, tmp_path / "b.sqlite")
    assert model.calibrated
    calibrated = analyse_upload(model, data, "x.png")["probabilities"]
    assert max(calibrated, key=calibrated.get) == max(raw, key=raw.get)
    assert max(calibrated.values()) < max(raw.values())  # T = 5 flattens the distribution
    assert open_existing_log(tmp_path / "b.sqlite").read()[0]["model_version"] == model.version != plain.version


def test_missing_or_unfinished_run_is_a_clear_error(tmp_path):
    with pytest.raises(LungCTError, match="run directory not found"):
        load_app_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LungCTError, match=r"not a finished run: model\.json is missing"):
        load_app_model(tmp_path / "empty")


def test_unwritable_log_still_predicts_and_says_why(app_run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the log's folder should be")
    model = load_app_model(app_run, blocker / "log.sqlite")
    assert model.log is None and "cannot open the prediction log" in model.log_error
    result = analyse_upload(model, slice_png(), "a.png")
    assert "error" not in result and result["logged"] is False


def test_correct_this_records_feedback_beside_the_prediction(model, tmp_path):
    from lungct.app.analysis import record_feedback

    result = analyse_upload(model, slice_png(kind=1), NAME)
    other = next(c for c in model.classes if c != result["predicted"])
    assert record_feedback(model, result["prediction_id"], other, "second reading") == (
        True,
        f"recorded: {result['predicted']} corrected to {other}",
    )
    ok, message = record_feedback(model, result["prediction_id"], "dragon")
    assert not ok and "not one of" in message
    ok, message = record_feedback(model, "f" * 32, other)
    assert not ok and "no prediction with id" in message
    (row,) = open_existing_log(tmp_path / "log.sqlite").read_feedback()
    assert (row["label"], row["predicted"], row["reason"]) == (other, result["predicted"], "second reading")


def test_with_a_familiarity_reference_the_app_result_says_whether_the_upload_is_familiar(app_run, tmp_path):
    """The page warns when `familiar` is false (lungct.app.page.UNFAMILIAR); the result must carry it."""
    import shutil

    from lungct.cli import main

    run = shutil.copytree(app_run, tmp_path / "run")
    assert main(["familiarity", "--run", str(run), "-q"]) == 0
    result = analyse_upload(load_app_model(run, tmp_path / "log.sqlite"), slice_png(), "slice.png")
    assert isinstance(result["familiar"], bool) and result["familiar"] == (result["novelty"] <= 1)
    plain = analyse_upload(load_app_model(app_run, tmp_path / "plain.sqlite"), slice_png(), "slice.png")
    assert "familiar" not in plain and "novelty" not in plain


def test_with_hu_offset_the_app_reads_a_16bit_export_as_its_lung_window_rendering(app_run, tmp_path):
    """`lungct app --hu-offset 1024`: a 16-bit HU upload is the slice the model was trained to read."""
    from lungct.dicom.hounsfield import LUNG
    from tests.data.test_hu_images import chest_hu, save_uint16

    hu = chest_hu(seed=5)
    export = save_uint16(hu, tmp_path / "export.png").read_bytes()
    display = png_bytes(Image.fromarray(LUNG.apply(hu)))
    windowed = load_app_model(app_run, tmp_path / "hu.sqlite", hu_offset=1024)
    plain = load_app_model(app_run, tmp_path / "plain.sqlite")
    as_display = analyse_upload(windowed, display, "display.png")["probabilities"]
    assert analyse_upload(windowed, export, "export.png")["probabilities"] == as_display
    assert analyse_upload(plain, export, "export.png")["probabilities"] != as_display
