"""The explain command and API on a tiny fine-tuned run: files written, layer groups, one-line errors."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from lungct.cli import main
from lungct.explain import Explainer, explain
from lungct.training import train
from lungct.training.freezing import parameter_layers
from tests.conftest import tiny_config, write_dataset


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fake_pretrained):
    root = tmp_path_factory.mktemp("explain")
    data = write_dataset(root / "data", per_class=8)
    cfg = tiny_config(data, fake_pretrained, phase1={"epochs": 1, "lr": 1e-3})
    cfg.train.phase2.epochs = 1
    cfg.model.input_size = 64  # MobileNetV2's last block is 2x2 here (1x1 at 32 px has nothing to localise)
    return train(cfg, root / "run", progress=False).path, data


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_heatmap_and_overlay_per_image(capsys, tiny_run, tmp_path):
    run, data = tiny_run
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "explain", "--run", run, "--out", out, "--target", "malignant", "-q", data)
    assert code == 0, err
    assert "24 heatmaps" in stdout
    heat = np.load(out / "Malignant_case_(3).npy")
    assert heat.shape == (48, 48) and heat.dtype == np.float32  # the slice's own size, not the model's 64 px
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    with Image.open(out / "Malignant_case_(3).png") as png:
        assert png.format == "PNG" and png.width > 100
    rows = list(csv.DictReader((out / "explanations.csv").open()))
    assert len(rows) == 24 and {r["label"] for r in rows} == {"malignant"}
    assert set(json.loads(rows[0]["probabilities"])) == {"benign", "malignant", "normal"}


def test_held_out_picks_from_the_split(capsys, tiny_run, tmp_path):
    run, _ = tiny_run
    code, _, err = _run(
        capsys, "explain", "--run", run, "--out", tmp_path / "o", "--from-split", "test", "--per-class", "1", "-q"
    )
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "o" / "explanations.csv").open()))
    assert len(rows) == 3 and len({r["path"].split("/")[-2] for r in rows}) == 3  # one per class folder


def test_layer_groups_follow_the_fine_tuning(tiny_run):
    run, data = tiny_run
    explainer = Explainer(run)
    top10 = parameter_layers(explainer.model.backbone)[-10:]
    names = {id(m): f"backbone.{n}" for n, m in explainer.model.backbone.named_modules()}
    finetuned, _ = explainer.resolve_layers(group="finetuned")
    frozen, _ = explainer.resolve_layers(group="frozen")
    everything, _ = explainer.resolve_layers(group="all")
    assert set(finetuned) <= {names[id(m)] for m in top10} and finetuned
    assert not set(finetuned) & set(frozen)
    assert set(everything) == set(finetuned) | set(frozen)
    image = data / "Normal cases" / "Normal case (1).png"
    for group in ("finetuned", "frozen"):
        e = explain(run, image, method="gradcam++", group=group)
        assert e.heatmap.shape == (48, 48) and np.isfinite(e.heatmap).all()
        assert e.layers == (finetuned if group == "finetuned" else frozen)
    named = explain(run, image, method="eigencam", layers=["blocks.5", "conv_head"])
    assert named.layers == ["backbone.blocks.5", "backbone.conv_head"]
    assert abs(sum(named.probabilities.values()) - 1) < 1e-4
    assert named.probability == named.probabilities[named.label]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--layer", "conv_hed"], "unknown layer 'conv_hed'; did you mean"),
        (["--layer", "xyzzy"], "unknown layer 'xyzzy'; the backbone's layers are conv_stem, bn1, blocks,"),
        (["--layer", "head.1"], "not a spatial feature map"),
        (["--target", "pneumonia"], "class 'pneumonia' is not in the model"),
        (["--layer", "conv_head", "--layers", "all"], "either layer names or a layer group"),
        (["--method", "lime"], "'lime' is not one of"),
        (["--layers", "some"], "'some' is not one of"),
    ],
)
def test_bad_requests_fail_with_one_line(capsys, tiny_run, tmp_path, extra, needle):
    run, data = tiny_run
    code, _, err = _run(capsys, "explain", "--run", run, "--out", tmp_path / "o", "-q", *extra, data / "Normal cases")
    assert code != 0
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_unreadable_image_is_one_line_and_others_still_written(capsys, tiny_run, tmp_path):
    run, data = tiny_run
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    good = data / "Normal cases" / "Normal case (2).png"
    code, _, err = _run(capsys, "explain", "--run", run, "--out", tmp_path / "o", "-q", bad, good)
    assert code == 1
    assert "broken.png" in err and "not a readable image" in err
    assert len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "o" / "Normal_case_(2).png").is_file()


def test_nothing_to_explain(capsys, tiny_run, tmp_path):
    code, _, err = _run(capsys, "explain", "--run", tiny_run[0], "--out", tmp_path / "o")
    assert code == 1 and "nothing to explain" in err


def test_an_unreadable_dicom_file_is_named_without_its_folders(capsys, tiny_run, tmp_path):
    """Like predict's lines: a DICOM file's folders may carry the patient's name, so the error names the file."""
    run, _ = tiny_run
    folder = tmp_path / "Doe_Janet_PID-937451"
    folder.mkdir()
    (folder / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # a header, then nothing usable
    (folder / "notes.png").write_text("not an image")
    code, _, err = _run(capsys, "explain", "--run", run, "--out", tmp_path / "out", "-q", folder / "IM0001.dcm")
    assert code == 1 and "could not read IM0001.dcm:" in err and "Doe_Janet" not in err, err
    code, _, err = _run(capsys, "explain", "--run", run, "--out", tmp_path / "out", "-q", folder / "notes.png")
    assert code == 1 and f"could not read {folder / 'notes.png'}:" in err, err  # not DICOM: the path as given


def test_a_dicom_slice_is_indexed_by_its_file_name_only(capsys, tiny_run, tmp_path):
    """explanations.csv travels with the overlays: a DICOM slice's folders (the patient's name) stay out of it."""
    from tests.dicom.dicom_factory import write_study

    run, data = tiny_run
    folder = tmp_path / "Doe_Janet_PID-937451"
    folder.mkdir()
    slices = sorted((data / "Malignant cases").iterdir())[:1]
    (dicom,) = write_study(folder, [Image.open(p) for p in slices])
    code, _, err = _run(capsys, "explain", "--run", run, "--out", tmp_path / "out", "-q", dicom, slices[0])
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "out" / "explanations.csv").open()))
    assert [r["path"] for r in rows] == [dicom.name, str(slices[0])]  # a JPEG keeps its path as given
    assert "Doe_Janet" not in (tmp_path / "out" / "explanations.csv").read_text()


def test_scorecam_under_quiet_prints_no_progress_bar(capsys, tiny_run, tmp_path):
    """pytorch-grad-cam's Score-CAM draws a bar of its own per image; `-q` promises none."""
    run, data = tiny_run
    one = next((data / "Normal cases").glob("*.png"))
    code, out, err = _run(capsys, "explain", "--run", run, "--out", tmp_path / "o", "--method", "scorecam", "-q", one)
    assert code == 0, err
    assert err == "" and out.startswith("1 heatmaps")


def test_a_file_name_that_is_not_utf8_is_explained_and_indexed_printably(capsys, tiny_run, tmp_path):
    """matplotlib's title and explanations.csv take text only: such a name failed after its heatmap was written."""
    import os
    import shutil

    run, data = tiny_run
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"slice \xff.png")  # bytes that are not UTF-8, as Python passes them on
    shutil.copy(next((data / "Normal cases").glob("*.png")), folder / name)
    code, _, err = _run(capsys, "explain", "--run", run, "--out", tmp_path / "o", "-q", folder)
    assert code == 0 and "Traceback" not in err, err
    (row,) = list(csv.DictReader((tmp_path / "o" / "explanations.csv").open(encoding="utf-8")))
    assert row["path"].endswith("slice \\xff.png") and row["png"] == "slice_\\xff.png"
    assert (tmp_path / "o" / row["png"]).is_file() and (tmp_path / "o" / row["npy"]).is_file()
