"""--out never destroys what a command reads or a run holds: inputs, a config, a run's files, other kinds of file.

Before these guards `lungct split --out CONFIG` replaced the config with CSV, `predict --out run/model.json` broke the
run, `predict --out x.png` replaced the image it predicted, and `explain --out` on the input folder wrote overlays
over the slices (x.png for x.png).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from lungct.cli import main
from lungct.training import train
from tests.conftest import tiny_config, write_dataset


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fake_pretrained) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("guards")
    cfg = tiny_config(write_dataset(base / "data", per_class=6), fake_pretrained)
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 1
    cfg.model.input_size = 64  # Grad-CAM needs a last block of 2x2 or more
    return train(cfg, base / "run", progress=False).path, base / "data"


def _one_line_refusal(code: int, out: str, err: str, *phrases: str) -> None:
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err


def test_predict_out_never_replaces_an_input_a_run_file_or_another_kind_of_file(capsys, tiny_run, tmp_path):
    run, data = tiny_run
    run = Path(shutil.copytree(run, tmp_path / "run"))
    image = tmp_path / "slice.png"
    shutil.copy(next((data / "Normal cases").glob("*.png")), image)
    config = tmp_path / "config.yaml"
    config.write_text("seed: 1\n")
    before = {p: _digest(p) for p in (image, run / "model.json", config)}
    for out, phrase in [
        (image, "is one of the command's inputs"),
        (run / "model.json", f"is a file of the run in {run}"),
        (config, "exists and is not a file of prediction lines"),
    ]:
        _one_line_refusal(*_run(capsys, "predict", "--run", run, image, "--out", out), f"--out {out}", phrase)
    assert {p: _digest(p) for p in before} == before
    # an earlier answer of predict is replaced as before, and a new file written
    lines = tmp_path / "lines.jsonl"
    for _ in range(2):
        code, _, err = _run(capsys, "predict", "--run", run, image, "--out", lines)
        assert code == 0, err
    assert json.loads(lines.read_text())["path"] == str(image)


def test_split_out_never_replaces_its_config_or_a_runs_split(capsys, tiny_run, tmp_path, fake_pretrained):
    run, data = tiny_run
    run = Path(shutil.copytree(run, tmp_path / "run"))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(data, fake_pretrained).model_dump(mode="json")))
    before = {p: _digest(p) for p in (config, run / "split.csv")}
    _one_line_refusal(*_run(capsys, "split", "--config", config, "--out", config), "is one of the command's inputs")
    _one_line_refusal(
        *_run(capsys, "split", "--config", config, "--out", run / "split.csv"), f"is a file of the run in {run}"
    )
    assert {p: _digest(p) for p in before} == before
    split = tmp_path / "split.csv"
    for _ in range(2):  # written, then replaced by the same command (as the DVC pipeline does)
        code, _, err = _run(capsys, "split", "--config", config, "--out", split, "-q")
        assert code == 0, err
    assert split.read_text().startswith("path,label,group,part")


def test_explain_out_never_writes_over_the_slices_it_explains(capsys, tiny_run, tmp_path):
    run, data = tiny_run
    slices = tmp_path / "slices"
    slices.mkdir()
    for k, path in enumerate(sorted((data / "Bengin cases").glob("*.png"))[:2]):
        shutil.copy(path, slices / f"{k}.png")
    before = {p: _digest(p) for p in slices.iterdir()}
    for out in (slices, tmp_path):  # the folder itself, and a folder above it
        code, out_text, err = _run(capsys, "explain", "--run", run, slices, "--out", out, "-q")
        _one_line_refusal(code, out_text, err, f"--out {out} holds the images being explained", "another folder")
    assert {p: _digest(p) for p in slices.iterdir()} == before
    code, _, err = _run(capsys, "explain", "--run", run, slices, "--out", tmp_path / "heatmaps", "-q")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "heatmaps").glob("*.png")) == ["0.png", "1.png"]


def test_evaluate_on_data_of_one_class_says_what_the_figures_cover(capsys, tiny_run, tmp_path):
    run, data = tiny_run
    shutil.copytree(data / "Normal cases", tmp_path / "screening" / "Normal cases")
    code, _, err = _run(
        capsys, "evaluate", "--run", run, "--data", tmp_path / "screening", "--out", tmp_path / "e", "-q"
    )
    assert code == 0, err
    assert err.strip() == (
        "lungct: warning: the data holds 1 of the model's 3 classes (normal): "
        "balanced accuracy and AUC cover those only"
    )
