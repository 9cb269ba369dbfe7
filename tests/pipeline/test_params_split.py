"""params.yaml overlays and the split stage: `lungct split`, `lungct train --split-file`, `--params`."""

import csv
from pathlib import Path

import pytest
import yaml

from lungct.cli import main
from lungct.config import load_config
from lungct.errors import LungCTError
from lungct.pipeline.params import load_config_with_params, merge_params
from lungct.pipeline.split import read_split_file, write_split
from tests.conftest import tiny_config


def test_merge_is_deep_and_lists_replace():
    base = {"train": {"phase1": {"epochs": 4, "lr": 1e-3}, "batch_size": 32}, "data": {"sources": [1, 2]}}
    got = merge_params(base, {"train": {"phase1": {"lr": 3e-4}}, "data": {"sources": [3]}})
    assert got == {"train": {"phase1": {"epochs": 4, "lr": 3e-4}, "batch_size": 32}, "data": {"sources": [3]}}
    assert base["train"]["phase1"]["lr"] == 1e-3  # the base is not changed


def test_params_overlay_a_config(tmp_path, tiny_dataset):
    config = tmp_path / "configs" / "c.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(tiny_config(tiny_dataset).model_dump(mode="json")))
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "pipeline": {"config": "configs/c.yaml", "out": "runs/x"},  # dvc.yaml's paths: not config fields
                "seed": 7,
                "train": {"phase1": {"lr": 0.01}},
                "model": {"weights": "w.safetensors"},
            }
        )
    )
    cfg = load_config_with_params(config, params)
    assert cfg.seed == 7 and cfg.train.phase1.lr == 0.01 and cfg.train.phase1.epochs == 2
    assert cfg.model.weights == str(tmp_path / "w.safetensors")  # relative to params.yaml
    assert cfg.data.sources[0].path == str(tiny_dataset)  # untouched
    params.write_text("train:\n  phase1:\n    lr_typo: 1\n")
    with pytest.raises(LungCTError, match=r"train\.phase1\.lr_typo"):
        load_config_with_params(config, params)
    params.write_text("- a list\n")
    with pytest.raises(LungCTError, match="must be a YAML mapping"):
        load_config_with_params(config, params)


def test_shipped_params_train_the_default_model():
    """`dvc repro` must train what `make demo` trains: params.yaml restates the default config's values, and laying
    it over configs/iqothnccd.yaml may change nothing (a stale value there would quietly train another recipe)."""
    root = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((root / "params.yaml").read_text())
    config = root / params["pipeline"]["config"]
    overlaid = load_config_with_params(config, root / "params.yaml").model_dump()
    default = load_config(config).model_dump()
    changed = [key for key in default if overlaid[key] != default[key]]
    assert not changed, changed


def test_a_bad_split_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "split.csv"
    bad.write_text("file,class\na.png,x\n")
    with pytest.raises(LungCTError, match="path,label,group,part"):
        read_split_file(bad)
    bad.write_text(f"path,label,group,part\n{tmp_path / 'gone.png'},normal,g1,train\n")
    with pytest.raises(LungCTError, match="do not exist"):
        read_split_file(bad)


def test_split_then_train_on_that_split(capsys, tmp_path, tiny_dataset):
    config = tmp_path / "c.yaml"
    raw = tiny_config(tiny_dataset, phase1={"epochs": 1, "lr": 1e-3}, phase2={"epochs": 0}).model_dump(mode="json")
    config.write_text(yaml.safe_dump(raw))
    split = tmp_path / "stage" / "split.csv"
    assert main(["split", "--config", str(config), "--out", str(split), "-q"]) == 0
    assert "split written to" in capsys.readouterr().out
    rows = list(csv.DictReader(split.open()))
    assert len(rows) == 36 and {r["part"] for r in rows} == {"train", "val", "test"}
    # Move one test image into training: the run must use this file as it is, not draw its own split.
    moved = next(r for r in rows if r["part"] == "test")
    moved["part"] = "train"
    with split.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--split-file", str(split), "--out", str(run), "-q"]) == 0
    assert (run / "split.csv").read_text() == split.read_text()
    assert (run / "model.safetensors").is_file()


def test_split_out_that_cannot_be_written_fails_before_the_scan(capsys, tmp_path, tiny_dataset, monkeypatch):
    import lungct.data.prepare as prepare

    monkeypatch.setattr(prepare, "prepare_data", lambda *a, **k: pytest.fail("scanned the data first"))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_dataset).model_dump(mode="json")))
    (tmp_path / "taken").write_text("a file")
    assert main(["split", "--config", str(config), "--out", str(tmp_path / "taken" / "split.csv"), "-q"]) == 1
    assert "taken cannot be used: exists and is not a folder" in capsys.readouterr().err
    assert main(["split", "--config", str(config), "--out", str(tmp_path), "-q"]) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(LungCTError, match="is a folder; give the split file's name"):
        write_split(tiny_config(tiny_dataset), tmp_path)  # the API, without typer's check
