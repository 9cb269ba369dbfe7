"""The command-line contract: train/evaluate/predict, and one-line errors for bad arguments."""

import json

import pytest
import yaml

from lungct.cli import main
from tests.conftest import tiny_config


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--bogus"], "No such option: --bogus"),
        (["train", "--out", "x", "--config", "missing.yaml"], "does not exist"),
        (["train", "--out", "x", "--split", "sideways"], "'sideways' is not one of"),
        (["train", "--out", "x", "--seed", "abc"], "--seed"),
        (["evaluate", "--run", "no/such/run", "--out", "o"], "does not exist"),
        (["predict", "--run", "."], "Missing argument"),
        (["train", "--out", "x", "--arch", "resnet5000"], "unknown backbone 'resnet5000'"),
        (["frobnicate"], "No such command"),
        (["familiarity", "--run", "."], "is not a finished run: model.json is missing"),  # was: "split file not found"
        # probabilities out of [0, 1] used to be taken: every study negative, every image referred
        (["predict-series", "--run", ".", ".", "--threshold", "1.5"], "Invalid value for '--threshold'"),
        (["threshold", "--run", ".", "--out", "o", "--refer-below", "2"], "Invalid value for '--refer-below'"),
        (["threshold", "--run", ".", "--out", "o", "--refer-below", "-0.1"], "Invalid value for '--refer-below'"),
        # found before the float export it used to follow
        (
            ["export", "--run", ".", "--int8-calibration-folder", "nope"],
            "Invalid value for '--int8-calibration-folder'",
        ),
    ],
)
def test_bad_arguments_fail_with_one_line(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *argv)
    assert code != 0
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_bad_config_content_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  batch_size: lots\n")
    code, _, err = _run(capsys, "train", "--config", cfg, "--out", tmp_path / "r")
    assert code == 1 and "train.batch_size" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("config", "needle"),
    [("seed: 1\n", "no data given"), ("data:\n  sources: [{path: nowhere}]\n", "data path not found")],
)
@pytest.mark.parametrize(
    "command",
    [
        ["train", "--out", "r"],
        ["cv", "--folds", "3", "--out", "r"],
        ["tune", "--trials", "2"],
        ["compare", "--archs", "small_cnn", "--out", "r"],
    ],
)
def test_a_config_without_data_fails_before_tracking_or_a_run_directory(
    capsys, tmp_path, monkeypatch, config, needle, command
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LUNGCT_TRACKING", "on")  # so that a tracked run started too early would leave mlruns/
    (tmp_path / "c.yaml").write_text(config)
    code, _, err = _run(capsys, *command, "--config", "c.yaml")
    assert code == 1 and needle in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # no mlruns/, no run or study folder


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--out", "taken"],
        ["cv", "--folds", "2", "--out", "taken", "-q"],
        ["tune", "--trials", "2", "--study-dir", "taken"],
        ["compare", "--archs", "small_cnn,mobilenetv2_100", "--out", "taken"],
    ],
)
def test_an_output_path_that_is_a_file_fails_before_tracking_or_training(
    capsys, tmp_path, monkeypatch, tiny_dataset, command
):
    """A file where --out should be a folder used to end in a FileExistsError traceback, inside a tracked run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LUNGCT_TRACKING", "on")  # so that a tracked run started too early would leave mlruns/
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config(tiny_dataset).model_dump(mode="json")))
    (tmp_path / "taken").write_text("a file, not a folder")
    code, _, err = _run(capsys, *command, "--config", "c.yaml")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "taken cannot be used: exists and is not a folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "data", "taken"]  # no mlruns/


@pytest.mark.parametrize("existed", [False, True], ids=["created", "given"])
def test_a_train_without_readable_images_removes_the_out_folder_it_made(capsys, tmp_path, monkeypatch, existed):
    """train made --out (for its early check that it can write there), then found no readable image and left the
    empty folder behind; a folder the user made beforehand stays."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "Normal cases").mkdir(parents=True)
    (tmp_path / "data" / "Normal cases" / "a.png").write_text("not an image")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path / "data").model_dump(mode="json")))
    if existed:
        (tmp_path / "r").mkdir()
    code, _, err = _run(capsys, "train", "--config", "c.yaml", "--out", "r", "--no-track", "-q")
    assert code == 1 and "no readable images" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "r").exists() is existed


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({}, "not a finished run: model.json is missing"),
        # it passed the presence check, then tracking began and the report folder was made before it was read
        ({"model.json": '{"arch": 5', "model.safetensors": "x"}, "notarun/model.json is damaged"),
    ],
)
def test_evaluate_on_a_folder_that_is_not_a_run_fails_before_tracking(capsys, tmp_path, monkeypatch, files, needle):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LUNGCT_TRACKING", "on")  # so that a tracked run started too early would leave mlruns/
    (tmp_path / "notarun").mkdir()
    for name, text in files.items():
        (tmp_path / "notarun" / name).write_text(text)
    code, _, err = _run(capsys, "evaluate", "--run", "notarun", "--out", "o")
    assert code == 1 and needle in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notarun"]  # no mlruns/, no report folder


def test_train_evaluate_predict_through_the_cli(capsys, tiny_dataset, fake_pretrained, tmp_path):
    cfg = tiny_config(tiny_dataset, fake_pretrained).model_dump(mode="json")
    cfg["train"]["phase1"]["epochs"] = 1
    cfg["train"]["phase2"]["epochs"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    code, out, err = _run(
        capsys, "train", "--config", tmp_path / "c.yaml", "--out", run, "--split", "group", "--seed", "3", "-q"
    )
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 3

    code, out, err = _run(capsys, "evaluate", "--run", run, "--out", tmp_path / "eval", "-q")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "n", "classes", "confusion_matrix"):
        assert key in metrics
    assert set(metrics["classes"]["benign"]) >= {"precision", "recall", "specificity", "f1", "auc", "support"}
    assert set(metrics["confusion_matrix"]) == {"labels", "matrix"}
    floor = metrics["ece_consistency"]
    assert floor["p5"] <= floor["median"] <= floor["p95"] and 0 <= floor["p_value"] <= 1
    assert "groups" in floor["method"]  # a group split: one label drawn per group
    assert f"ece {floor['p5']:.3f}-{floor['p95']:.3f}" in out

    # evaluate on other labelled data given with --data
    code, out, err = _run(capsys, "evaluate", "--run", run, "--data", tiny_dataset, "--out", tmp_path / "e2", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["n"] == 36
    assert metrics["tta"] is False

    code, out, err = _run(capsys, "evaluate", "--run", run, "--out", tmp_path / "tta", "--tta", "-q")
    assert code == 0, err
    with_tta = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert with_tta["tta"] is True and with_tta["n"] == metrics["n"]
    plain_rows = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()
    assert (tmp_path / "tta" / "predictions.csv").read_text().splitlines()[1:] != plain_rows[1:]

    (tmp_path / "empty.png").write_bytes(b"")
    code, out, err = _run(capsys, "predict", "--run", run, tiny_dataset / "Normal cases", tmp_path / "empty.png")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 13
    assert set(lines[0]) == {"path", "label", "probabilities"}
    assert lines[-1] == {"path": str(tmp_path / "empty.png"), "error": "empty file"}
    assert "1 of 13 files could not be predicted" in err, err
    # nothing predicted: every line is still written, and the exit code says so
    code, out, err = _run(capsys, "predict", "--run", run, tmp_path / "empty.png", "--out", tmp_path / "lines.jsonl")
    assert (
        code == 1
        and err.strip() == "lungct: error: could not predict the file; each line names the reason under 'error'"
    )
    assert json.loads((tmp_path / "lines.jsonl").read_text()) == lines[-1]

    # an --out that cannot be written is found before predicting, and for evaluate before tracking
    (tmp_path / "a_file").write_text("not a folder")
    for command in (
        ["predict", "--run", run, tiny_dataset, "--out", tmp_path / "a_file" / "lines.jsonl"],
        ["evaluate", "--run", run, "--out", tmp_path / "a_file" / "eval"],
        ["explain", "--run", run, tiny_dataset / "Normal cases", "--out", tmp_path / "a_file"],
    ):
        code, out, err = _run(capsys, *command)
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert f"{tmp_path / 'a_file'}" in err and "cannot be used" in err, err

    # a folder with nothing to read is a one-line error naming it, not an empty answer
    (tmp_path / "no_images").mkdir()
    (tmp_path / "no_images" / "notes.txt").write_text("not a slice")
    for command in (["predict"], ["explain", "--out", tmp_path / "heatmaps"]):
        code, out, err = _run(capsys, *command, "--run", run, tmp_path / "no_images")
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
        assert f"{tmp_path / 'no_images'}: no images in this folder" in err


def test_cli_startup_does_not_import_torch():
    """`lungct --help` and argument errors must be instant: command modules load torch only when they run."""
    import subprocess
    import sys

    code = "import sys, lungct.cli; print(sorted(m for m in ('torch', 'timm', 'mlflow', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unforeseen_file_system_error_is_one_line_naming_the_path(capsys, monkeypatch):
    """The last line of defence: an OSError with a path that no command checked for still names the path."""
    import importlib

    cli_main = importlib.import_module("lungct.cli.main")

    def raising(error):
        def app(**kwargs):
            raise error

        return app

    monkeypatch.setattr(cli_main, "app", raising(PermissionError(13, "Permission denied", "/srv/lungct/x.json")))
    assert cli_main.main(["train"]) == 1
    assert capsys.readouterr().err == "lungct: error: /srv/lungct/x.json: Permission denied\n"
    monkeypatch.setattr(cli_main, "app", raising(ConnectionResetError(104, "Connection reset by peer")))
    with pytest.raises(ConnectionResetError):  # no path to name: not a user's file problem, so not hidden
        cli_main.main(["train"])


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_out_of_numpys_range_is_a_usage_error_before_the_scan(capsys, tmp_path, seed):
    code, out, err = _run(capsys, "train", "--data", tmp_path, "--seed", seed, "--out", tmp_path / "run")
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert err.startswith("lungct: error: Invalid value for '--seed'") and (
        "4294967295" in err or ">= 0" in err or "greater than or equal to 0" in err
    )
