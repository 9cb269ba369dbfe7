"""The default experiment on a small subset of the real shared data, end to end (marker: realdata)."""

import csv
import json
from pathlib import Path

import pytest

from lungct.cli import main
from lungct.config import load_config
from lungct.training import train
from tests.conftest import needs_shared

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "iqothnccd.yaml"


@needs_shared
@pytest.mark.realdata
def test_default_config_trains_on_real_subset(tmp_path, capsys):
    cfg = load_config(CONFIG)
    cfg.data.max_images_per_class = 24
    cfg.model.input_size = 128
    # the default recipe: a logistic-regression probe on frozen features of the whole slice (no fine-tuning)
    assert cfg.train.phase1.solver == "logistic" and cfg.train.phase2.epochs == 0 and cfg.model.crop_pct == 1.0
    assert cfg.model.interpolation == "bilinear"
    run = train(cfg, tmp_path / "run", progress=False)

    card = json.loads(run.model_json.read_text())
    assert card["classes"] == ["benign", "malignant", "normal"]
    assert card["pretrained"] is True and card["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    # prediction, export and serving resize the whole slice the same way
    assert card["preprocess"]["crop_pct"] == 1.0 and card["preprocess"]["interpolation"] == "bilinear"
    with run.history.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["phase"] for r in rows] == ["head"]
    # the probe: pretrained features separate the training slices, and beat chance (1/3) on unseen patients
    assert float(rows[0]["train_accuracy"]) > 0.9
    assert float(rows[0]["val_balanced_accuracy"]) > 0.5

    assert main(["evaluate", "--run", str(run.path), "--out", str(tmp_path / "eval"), "-q"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    summary = json.loads(run.summary.read_text())
    assert metrics["n"] == sum(summary["counts"]["test"].values()) > 0
    capsys.readouterr()
    test_image = next(p for p, part in _parts(run.split) if part == "test")
    assert main(["predict", "--run", str(run.path), test_image]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["label"] in card["classes"]


def _parts(split_csv: Path):
    with split_csv.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            yield row["path"], row["part"]
