"""Cross-validation: folds partition the data by group, and every fold is trained, tested and summarised."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from lungct.cli import main
from lungct.crossval.folds import cross_validate, fold_splits, pool_from_config, summarise
from lungct.errors import LungCTError
from tests.conftest import tiny_config


def test_fold_test_parts_partition_the_data_and_keep_groups_whole(tiny_dataset):
    cfg = tiny_config(tiny_dataset)
    cfg.split.mode = "group"
    pool = pool_from_config(cfg, progress=False)
    splits = fold_splits(pool, 3, cfg)
    tested = [i.path for split in splits for i in split if i.part == "test"]
    assert sorted(tested) == sorted(pool.paths)  # each image tested exactly once
    for split in splits:
        parts_of_group = defaultdict(set)
        for item in split:
            parts_of_group[item.group].add(item.part)
        assert all(len(p) == 1 for p in parts_of_group.values())
        assert {i.part for i in split} == {"train", "val", "test"}
    with pytest.raises(LungCTError, match="at least 2"):
        fold_splits(pool, 1, cfg)


def test_summarise_gives_mean_and_spread():
    s = summarise([{"accuracy": 0.8, "macro_auc": None}, {"accuracy": 0.6, "macro_auc": 0.9}])
    assert s["accuracy"]["mean"] == pytest.approx(0.7)
    assert s["accuracy"]["std"] == pytest.approx(0.1414, abs=1e-3)
    assert s["macro_auc"] == {"mean": 0.9, "std": 0.0, "min": 0.9, "max": 0.9}


def test_cross_validate_writes_per_fold_table(tiny_dataset, tmp_path, monkeypatch):
    import lungct.crossval.folds as folds_module

    checked = []  # which folds were evaluated (their test and validation parts predicted)
    real_check = folds_module.temperature_check
    monkeypatch.setattr(folds_module, "temperature_check", lambda run: checked.append(run.name) or real_check(run))
    cfg = tiny_config(tiny_dataset)
    result = cross_validate(cfg, 3, tmp_path / "cv", progress=False, n_bootstrap=20)
    assert [r["fold"] for r in result["per_fold"]] == [1, 2, 3]
    assert sum(r["n_test"] for r in result["per_fold"]) == 36
    acc = result["summary"]["accuracy"]
    assert acc["min"] <= acc["mean"] <= acc["max"]
    assert "benign.recall" in result["summary"]
    # Each fold's temperature is fitted on its validation part and judged on its test part, then pooled.
    assert all(r["temperature"] > 0 and 0 <= r["ece_calibrated"] <= 1 for r in result["per_fold"])
    cal = result["calibration"]
    ece = [r["ece"] for r in result["per_fold"]]
    after = [r["ece_calibrated"] for r in result["per_fold"]]
    assert cal["mean_before"]["ece"] == pytest.approx(np.mean(ece), abs=1e-6)  # raw fold runs: evaluate's ECE
    assert cal["mean_after"]["ece"] == pytest.approx(np.mean(after))
    assert cal["folds_with_lower_ece"] == sum(a < b for a, b in zip(after, ece, strict=True))
    for key in ("ece", "nll", "brier"):
        change = cal["change"][key]
        assert change["delta"] == pytest.approx(cal["mean_after"][key] - cal["mean_before"][key])
    assert "folds. Mean over folds: ECE" in (tmp_path / "cv" / "cv.md").read_text()
    assert (tmp_path / "cv" / "fold_2" / "eval" / "reliability_temperature.png").is_file()
    assert not any(r["reused"] for r in result["per_fold"])
    for f in ("cv.json", "cv.csv", "cv.md", "fold_1/model.safetensors", "fold_3/eval/metrics.json"):
        assert (tmp_path / "cv" / f).is_file(), f
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["folds"] == 3
    # Run again: finished folds are reused, not retrained.
    mtime = (tmp_path / "cv" / "fold_1" / "model.safetensors").stat().st_mtime
    again = cross_validate(cfg, 3, tmp_path / "cv", progress=False, n_bootstrap=20)
    assert all(r["reused"] for r in again["per_fold"])
    assert "3 of 3 folds reused" in (tmp_path / "cv" / "cv.md").read_text()
    assert (tmp_path / "cv" / "fold_1" / "model.safetensors").stat().st_mtime == mtime
    # ... and their evaluations are kept, not predicted again: the same rows, the same calibration summary
    assert checked == ["fold_1", "fold_2", "fold_3"]
    drop = ("seconds", "reused")
    assert [{k: v for k, v in r.items() if k not in drop} for r in again["per_fold"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in result["per_fold"]
    ]
    assert again["calibration"] == result["calibration"]
    # other settings, or a damaged kept evaluation, are evaluated again
    (tmp_path / "cv" / "fold_2" / "eval" / "fold_eval.npz").write_bytes(b"half a file")
    cross_validate(cfg, 3, tmp_path / "cv", progress=False, n_bootstrap=20)
    assert checked[3:] == ["fold_2"]
    cross_validate(cfg, 3, tmp_path / "cv", progress=False, n_bootstrap=30)
    assert checked[4:] == ["fold_1", "fold_2", "fold_3"]
    metrics = tmp_path / "cv" / "fold_3" / "eval" / "metrics.json"  # evaluated since by hand (another report)
    metrics.write_text(metrics.read_text().replace('"tta": false', '"tta": true'))
    cross_validate(cfg, 3, tmp_path / "cv", progress=False, n_bootstrap=30)
    assert checked[7:] == ["fold_3"]


@pytest.mark.parametrize(("folds", "needle"), [("99", "too few for 99-fold cv"), ("1", "--folds must be at least 2")])
def test_cv_cli_rejects_bad_folds_before_tracking_or_writing(
    tiny_dataset, tmp_path, capsys, monkeypatch, folds, needle
):
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LUNGCT_TRACKING", "on")  # so that a tracked run started too early would leave mlruns/
    cfg = tiny_config(tiny_dataset)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    code = main(["cv", "--config", "c.yaml", "--folds", folds, "--out", "o", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and needle in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "data"]  # no mlruns/, no cv folder


@pytest.mark.parametrize(
    ("holds", "message"),
    [("notes", r"holds files but no lungct cv \(no cv.json or fold_1\)"), ("run", "is a trained run")],
)
def test_cv_refuses_an_out_folder_holding_something_else(tiny_dataset, tmp_path, holds, message):
    """train refused such a folder; cv wrote fold_1/, fold_2/ and cv.* into it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ("important.txt" if holds == "notes" else "model.json")).write_text("keep me")
    with pytest.raises(LungCTError, match=message):
        cross_validate(tiny_config(tiny_dataset), 2, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["important.txt" if holds == "notes" else "model.json"]
