"""End to end: train on DICOM, `lungct predict` on .dcm files, `lungct predict-series` on a folder and a zip.

The files carry patient tags; no output may contain any of them.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lungct.cli import main
from lungct.config import parse_config
from lungct.run import RunDir
from lungct.training import train
from tests.conftest import CLASS_FOLDERS, IQ_OTH, needs_shared, synthetic_slice, tiny_config
from tests.dicom.dicom_factory import PRIVATE_VALUES, ct_dataset, hu_from_grey, write, write_study

N_SLICES = 6


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_private(text: str) -> None:
    for value in PRIVATE_VALUES:
        assert value.lower() not in text.lower(), f"patient data {value!r} leaked"


def _dicom_dataset(root: Path, per_class: int = 10) -> Path:
    """The tiny synthetic dataset, every slice stored as a DICOM CT file with patient tags."""
    for k, folder in enumerate(CLASS_FOLDERS):
        write_study(root / folder, [synthetic_slice(k, 7000 + k * 100 + i) for i in range(per_class)])
    return root


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory, fake_pretrained) -> Path:
    base = tmp_path_factory.mktemp("dicomrun")
    cfg = tiny_config(_dicom_dataset(base / "data"), fake_pretrained)
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 1
    return train(cfg, base / "run", progress=False).path


@pytest.fixture
def study(tmp_path) -> Path:
    images = [synthetic_slice(1 if i in (2, 3) else 2, 9000 + i) for i in range(N_SLICES)]
    write_study(tmp_path / "Doe_Janet" / "series", images, order=[5, 0, 3, 1, 4, 2])
    return tmp_path / "Doe_Janet" / "series"


def test_training_on_dicom_records_the_window(dicom_run):
    card = RunDir(dicom_run).card()
    assert card.preprocess.dicom_window == "lung"
    assert json.loads(RunDir(dicom_run).summary.read_text())["status"] == "complete"


def test_predict_on_dcm_files(capsys, dicom_run, study):
    assert str(pydicom.dcmread(study / "IM0000.dcm").PatientName) == "Doe^Janet^Q"  # the tags are there to leak
    code, out, err = _run(capsys, "predict", "--run", dicom_run, *sorted(study.glob("*.dcm")))
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert len(lines) == N_SLICES and all("error" not in r for r in lines)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in lines)
    # named by file name only: the folder "Doe_Janet" (a patient's name, as in many DICOM exports) is not echoed
    assert [r["file"] for r in lines] == [p.name for p in sorted(study.glob("*.dcm"))]
    _assert_private(out + err)

    # a PACS export names its slices without an extension: a folder of them is read by the DICOM header
    for path in study.glob("*.dcm"):
        path.rename(path.with_suffix(""))
    (study / "DICOMDIR.txt").write_text("not a slice")
    code, out2, err = _run(capsys, "predict", "--run", dicom_run, study.parent)
    assert code == 0, err
    assert [json.loads(x) for x in out2.splitlines()] == [{**r, "file": Path(r["file"]).stem} for r in lines]


@pytest.mark.parametrize("as_zip", [False, True])
def test_predict_series(capsys, dicom_run, study, tmp_path, as_zip):
    source = study
    if as_zip:
        source = tmp_path / "series.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for f in study.iterdir():
                zf.write(f, f.name)
    code, out, err = _run(capsys, "predict-series", "--run", dicom_run, "--aggregate", "topk", "--top-k", "2", source)
    assert code == 0, err
    *slices, study_line = [json.loads(x) for x in out.splitlines()]
    assert [s["slice"] for s in slices] == list(range(N_SLICES))
    assert all(s["id"].startswith("sop-") for s in slices)
    assert study_line["study"] and study_line["order"] == "position" and study_line["n_slices"] == N_SLICES
    scores = np.array([s["probabilities"]["malignant"] for s in slices])
    assert study_line["score"] == pytest.approx(np.sort(scores)[-2:].mean(), abs=1e-5)
    assert [d["slice"] for d in study_line["driving_slices"]] == list(np.argsort(-scores, kind="stable")[:2])
    assert study_line["window"] == "lung" and study_line["positive_class"] == "malignant"
    _assert_private(out + err)


def test_blank_slices_are_reported_but_never_drive_the_study(capsys, dicom_run, tmp_path):
    """A slice of one grey level (air alone) still got a label, and under `max` it could decide the study."""
    from PIL import Image

    images = [synthetic_slice(2, 9100 + i) for i in range(4)]
    images.insert(2, Image.new("L", (48, 48), 0))
    write_study(tmp_path / "series", images)
    code, out, err = _run(capsys, "predict-series", "--run", dicom_run, "--aggregate", "max", tmp_path / "series")
    assert code == 0, err
    *slices, study_line = [json.loads(x) for x in out.splitlines()]
    assert len(slices) == 5 and study_line["n_slices"] == 5  # every slice is still reported
    assert study_line["blank_slices"] == [2]
    scores = [s["probabilities"]["malignant"] for s in slices]
    content = [i for i in range(5) if i != 2]
    assert study_line["score"] == pytest.approx(max(scores[i] for i in content), abs=1e-5)
    assert study_line["driving_slices"][0]["slice"] != 2

    write_study(tmp_path / "air", [Image.new("L", (48, 48), 0)] * 3)
    code, _, err = _run(capsys, "predict-series", "--run", dicom_run, tmp_path / "air")
    assert code == 1 and "air: every slice is blank (one grey level in the lung window)" in err
    assert len(err.strip().splitlines()) == 1


def test_a_series_says_which_slices_are_unlike_the_training_images(capsys, dicom_run, study, tmp_path):
    import shutil

    run = shutil.copytree(dicom_run, tmp_path / "run")
    assert main(["familiarity", "--run", str(run), "-q"]) == 0
    capsys.readouterr()
    code, out, err = _run(capsys, "predict-series", "--run", run, study)
    assert code == 0, err
    *slices, study_line = [json.loads(x) for x in out.splitlines()]
    assert all(isinstance(s["familiar"], bool) and s["familiar"] == (s["novelty"] <= 1) for s in slices)
    assert study_line["unfamiliar_slices"] == [s["slice"] for s in slices if not s["familiar"]]


def test_predict_series_errors_are_one_line(capsys, dicom_run, study):
    from tests.dicom.dicom_factory import ct_dataset, write

    write(ct_dataset(np.zeros((48, 48)), modality="MR", series_uid="9.9"), study / "mr.dcm")
    code, _, err = _run(capsys, "predict-series", "--run", dicom_run, study)
    assert code == 1 and "modality is MR, not CT" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "predict-series", "--run", dicom_run, "--force", study)
    assert code == 1 and "inconsistent series" in err
    _assert_private(err.replace(str(study.parent), ""))


def test_stack3_trains_and_predicts_with_three_windows(capsys, tmp_path, fake_pretrained, study):
    raw = tiny_config(_dicom_dataset(tmp_path / "data", per_class=6), fake_pretrained).model_dump()
    raw["data"]["dicom_window"] = "stack3"
    raw["train"]["phase1"]["epochs"] = raw["train"]["phase2"]["epochs"] = 1
    cfg = parse_config(raw)
    assert cfg.data.color == "rgb"
    run = train(cfg, tmp_path / "run", progress=False).path
    assert RunDir(run).card().preprocess.dicom_window == "stack3"
    code, out, err = _run(capsys, "predict-series", "--run", run, study)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["window"] == "stack3"


@needs_shared
@pytest.mark.realdata
def test_iqothnccd_study_end_to_end(capsys, tmp_path, fake_pretrained):
    """Real IQ-OTH/NCCD slices wrapped as one DICOM study predict through both commands, privately."""
    from PIL import Image

    cfg = tiny_config(IQ_OTH, fake_pretrained)
    cfg.data.max_images_per_class = 8
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 1
    run = train(cfg, tmp_path / "run", progress=False).path
    files = sorted((IQ_OTH / "Malignant cases").glob("*.jpg"))[:5]
    study = tmp_path / "study"
    write_study(study, [Image.open(f).convert("L") for f in files], order=[4, 2, 0, 3, 1])
    code, out, err = _run(capsys, "predict", "--run", run, study)
    assert code == 0, err
    assert len(out.splitlines()) == 5 and all("label" in json.loads(x) for x in out.splitlines())
    code, out2, err2 = _run(capsys, "predict-series", "--run", run, study)
    assert code == 0, err2
    assert len(out2.splitlines()) == 6
    _assert_private(out + err + out2 + err2)


def test_a_damaged_dicom_file_is_one_line_without_pydicoms_warnings(capsys, caplog, tmp_path):
    """pydicom's warning and log line quote the file's path (a folder can carry the patient's name)."""
    import warnings

    series = tmp_path / "Doe_Janet"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)  # a DICM preamble, then garbage
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = _run(capsys, "predict-series", "--run", tmp_path, series)
    hint = "nothing readable after its header: truncated or damaged?"
    assert code == 1 and out == "" and err == f"lungct: error: 1.dcm: DICOM file has no pixel data ({hint})\n", err
    assert [str(w.message) for w in caught if "pydicom" in w.filename] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")] == []


def test_a_folder_of_16bit_slices_is_a_series_in_file_name_order(capsys, dicom_run, tmp_path):
    """Research archives share a study as one 16-bit PNG of HU + 32768 per slice (DeepLesion); predict-series
    takes such a folder with --hu-offset, orders it as the names count, and reads each slice as its DICOM twin."""
    from PIL import Image

    hus = [np.round(hu_from_grey(synthetic_slice(k % 3, 9300 + k))) for k in range(4)]
    names = ["1.png", "2.png", "10.png", "11.png"]  # natural order: 10 after 2
    folder, twins = tmp_path / "export", tmp_path / "twins"
    folder.mkdir()
    for name, hu in zip(names, hus, strict=True):
        Image.fromarray((hu + 32768).astype(np.uint16)).save(folder / name)  # the lung window reaches -1350 HU
        write(ct_dataset(hu), twins / f"{name}.dcm")
    (folder / "3.png").write_bytes(b"")  # a damaged export of one slice
    (folder / "notes.txt").write_text("not a slice")  # counted as skipped, as in a DICOM series
    Image.fromarray(np.full((48, 48), 31768, np.uint16)).save(folder / "4.png")  # air alone: one grey level
    code, out, err = _run(capsys, "predict-series", "--run", dicom_run, "--hu-offset", "32768", folder)
    assert code == 0, err
    *slices, study_line = [json.loads(x) for x in out.splitlines()]
    assert [s["id"] for s in slices] == ["1.png", "2.png", "3.png", "4.png", "10.png", "11.png"]
    assert slices[2] == {"slice": 2, "id": "3.png", "error": "empty file"}
    assert slices[3]["slice"] == 3 and slices[3]["error"].startswith("blank image")
    assert study_line["order"] == "name" and study_line["window"] == "lung" and study_line["n_slices"] == 6
    assert study_line["unreadable_slices"] == [2, 3] and study_line["skipped_files"] == 1
    code, out, err = _run(capsys, "predict", "--run", dicom_run, *(twins / f"{n}.dcm" for n in names))
    assert code == 0, err
    twin = {json.loads(x)["file"]: json.loads(x)["probabilities"] for x in out.splitlines()}
    read = [s for s in slices if "error" not in s]
    for s in read:
        assert s["probabilities"] == pytest.approx(twin[f"{s['id']}.dcm"], abs=1e-6)
    scores = [s["probabilities"]["malignant"] for s in read]
    assert study_line["score"] == pytest.approx(max(scores), abs=1e-5)
    assert study_line["driving_slices"][0]["id"] == read[int(np.argmax(scores))]["id"]

    # display slices (8-bit) need no offset and have no window; --window would mean nothing for them
    display = tmp_path / "display"
    display.mkdir()
    for k in range(3):
        synthetic_slice(k, 9400 + k).save(display / f"{k}.png")
    code, out, err = _run(capsys, "predict-series", "--run", dicom_run, display)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["window"] is None
    code, _, err = _run(capsys, "predict-series", "--run", dicom_run, "--window", "lung", display)
    assert code == 1 and "--window applies to DICOM series and to image files read as HU" in err

    # one-line refusals: an offset for DICOM slices, and a folder where no slice can be read
    code, _, err = _run(capsys, "predict-series", "--run", dicom_run, "--hu-offset", "1024", twins)
    assert code == 1 and "DICOM slices carry their own rescale" in err and len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "1.png").write_bytes(b"")
    code, _, err = _run(capsys, "predict-series", "--run", dicom_run, broken)
    assert code == 1 and err.strip() == "lungct: error: broken: no slice could be read (1.png: empty file)"


def test_a_series_of_tiny_slices_is_refused_like_tiny_image_files(capsys, dicom_run, tmp_path):
    """A series of 2x2 slices was scored, and its study called malignant; image files under 32 px are refused."""
    from PIL import Image

    write_study(tmp_path / "tiny", [Image.fromarray(np.array([[0, 80], [160, 240]], np.uint8))] * 3)
    code, out, err = _run(capsys, "predict-series", "--run", dicom_run, tmp_path / "tiny")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "tiny: slices of 2x2 pixels, too small for a CT slice (at least 32 a side)" in err
