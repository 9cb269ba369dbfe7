"""`lungct compare`: backbones on one split, honest pretrained/from-scratch marking, resumable, recommendations."""

import csv
import json

import pytest

from lungct.cli import main
from lungct.compare.core import arch_config, compare
from lungct.compare.profile import count_parameters, flops_per_image
from lungct.compare.report import recommend
from lungct.compare.settings import CompareSettings
from lungct.config import save_config
from lungct.data.splits import load_split, save_split
from lungct.run import RunDir, load_model
from tests.conftest import tiny_config


def _cfg(data, weights):
    cfg = tiny_config(data, weights)
    cfg.data.positive_class = "malignant"
    cfg.train.phase1.epochs = 1
    cfg.train.phase2.epochs = 1
    return cfg


def test_two_backbones_share_one_split_and_are_marked_honestly(tiny_dataset, fake_pretrained, tmp_path):
    cfg = _cfg(tiny_dataset, fake_pretrained)
    settings = CompareSettings(["mobilenetv2_100", "small_cnn"], tmp_path / "cmp", n_bootstrap=50, progress=False)
    result = compare(cfg, settings)
    rows = {r["arch"]: r for r in result["rows"]}
    assert set(rows) == {"mobilenetv2_100", "small_cnn"}
    assert rows["mobilenetv2_100"]["pretrained"] is True and rows["mobilenetv2_100"]["init"].startswith("pretrained")
    assert rows["small_cnn"]["pretrained"] is False and rows["small_cnn"]["init"] == "from scratch"
    for r in rows.values():
        assert r["positive_class"] == "malignant"
        metrics = json.loads((tmp_path / "cmp" / "runs" / r["arch"] / "eval" / "metrics.json").read_text())
        assert r["accuracy"] == pytest.approx(metrics["accuracy"])  # the leaderboard reports the run's own test
        model, card = load_model(RunDir(tmp_path / "cmp" / "runs" / r["arch"]))
        assert r["params"] == sum(p.numel() for p in model.parameters())
        assert r["mflops"] == pytest.approx(flops_per_image(model, card.preprocess.input_size) / 1e6, abs=0.05)
        assert r["n_test"] == result["split"]["test"]
    assert rows["small_cnn"]["params"] < rows["mobilenetv2_100"]["params"]

    out = tmp_path / "cmp"
    shared = load_split(out / "split.csv")
    assert load_split(out / "runs" / "small_cnn" / "split.csv") == shared
    assert load_split(out / "runs" / "mobilenetv2_100" / "split.csv") == shared
    md = (out / "leaderboard.md").read_text()
    assert "| small_cnn | from scratch |" in md
    assert "Trained from scratch (random initial weights): small_cnn. They are not transfer-learned" in md
    assert (out / "roc.png").is_file()
    assert result["accuracy_gap"]["runner_up"] in rows and len(result["accuracy_gap"]["ci95"]) == 2
    assert [r["setting"] for r in result["recommendations"]] == [
        "best accuracy",
        "CPU-only clinic PC",
        "mobile / smallest",
    ]
    with (out / "leaderboard.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2
    assert json.loads((out / "leaderboard.json").read_text())["archs"] == ["mobilenetv2_100", "small_cnn"]

    # a second call reuses both finished runs instead of training them again
    stamp = (out / "runs" / "small_cnn" / "model.safetensors").stat().st_mtime_ns
    mobilenet_stamp = (out / "runs" / "mobilenetv2_100" / "model.safetensors").stat().st_mtime_ns
    compare(cfg, settings)
    assert (out / "runs" / "small_cnn" / "model.safetensors").stat().st_mtime_ns == stamp

    # a run left from another split is trained again on the comparison's, so its row is scored on the same test part
    run_split = out / "runs" / "small_cnn" / "split.csv"
    items = load_split(run_split)
    moved = [type(i)(i.path, i.label, i.group, "train" if i.part == "test" else i.part) for i in items]
    save_split(moved, run_split)
    compare(cfg, settings)
    assert (out / "runs" / "small_cnn" / "model.safetensors").stat().st_mtime_ns != stamp
    assert load_split(run_split) == shared
    assert (out / "runs" / "mobilenetv2_100" / "model.safetensors").stat().st_mtime_ns == mobilenet_stamp


def test_only_the_configs_backbone_gets_its_weights(tiny_dataset, fake_pretrained):
    cfg = _cfg(tiny_dataset, fake_pretrained)
    assert arch_config(cfg, "mobilenetv2_100").model.weights == str(fake_pretrained)
    assert arch_config(cfg, "mnasnet_100").model.weights is None
    assert arch_config(cfg, "mnasnet_100", weights="other.safetensors").model.weights is None
    assert cfg.model.arch == "mobilenetv2_100"  # the base config is untouched
    cfg.model.weights = "hub"  # each backbone's own published weights: valid for all
    assert arch_config(cfg, "mnasnet_100").model.weights == "hub"


def test_recommendations_follow_budget_and_tolerance():
    def row(arch, acc, ms, mflops, pretrained=True):
        ci = [acc - 0.05, acc + 0.05]
        return dict(arch=arch, accuracy=acc, accuracy_ci95=ci, auc=0.9, params=mflops * 1000, mflops=mflops,
                    latency_ms=ms, pretrained=pretrained)  # fmt: skip

    rows = [row("big", 0.90, 80.0, 4000), row("mid", 0.88, 20.0, 600), row("tiny", 0.86, 5.0, 60, False)]
    settings = CompareSettings(["small_cnn", "mnasnet_100"], "unused", latency_budget_ms=50, accuracy_tolerance=0.05)
    unsure = {"runner_up": "mid", "delta": 0.02, "ci95": [-0.04, 0.08]}
    recs = {r["setting"]: r for r in recommend(rows, settings, unsure)}
    assert recs["best accuracy"]["arch"] == "big"
    assert "cannot tell them apart" in recs["best accuracy"]["why"]
    sure = {"runner_up": "mid", "delta": 0.02, "ci95": [0.01, 0.04]}
    assert "a real lead" in recommend(rows, settings, sure)[0]["why"]
    assert recs["CPU-only clinic PC"]["arch"] == "mid"
    assert recs["mobile / smallest"]["arch"] == "tiny" and recs["mobile / smallest"]["from_scratch"] is True
    assert recs["best accuracy"]["from_scratch"] is False
    settings.latency_budget_ms = 1
    assert "none meets 1 ms" in recommend(rows, settings)[1]["why"]
    settings.accuracy_tolerance = 0.01  # only "big" is acceptable now; the smaller ones are named as such
    mobile = recommend(rows, settings)[2]
    assert mobile["arch"] == "big" and "smaller but below 0.890 accuracy: mid" in mobile["why"]


def test_flops_and_parameters_of_a_known_layer():
    import torch

    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False))
    assert count_parameters(conv) == 3 * 8 * 9
    assert flops_per_image(conv, 16) == 2 * 3 * 8 * 9 * 16 * 16  # 2 x multiply-adds


def test_compare_cli_errors_are_one_line(tiny_dataset, fake_pretrained, tmp_path, capsys):
    save_config(_cfg(tiny_dataset, fake_pretrained), tmp_path / "c.yaml")
    base = ["compare", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "-q"]
    assert main([*base, "--archs", "small_cnn"]) == 1
    assert "at least two backbones" in capsys.readouterr().err
    assert main([*base, "--archs", "small_cnn,resnet5000"]) == 1
    assert "unknown backbone 'resnet5000'" in capsys.readouterr().err
    assert main([*base, "--archs", "small_cnn,mnasnet_100", "--weights", str(fake_pretrained)]) == 1
    err = capsys.readouterr().err
    assert "--weights is for the config's backbone mobilenetv2_100" in err and len(err.strip().splitlines()) == 1
    # an --out holding other files (a dataset, a run) got runs/, split.csv and leaderboard.* mixed into it
    for name, message in (("notes.txt", "holds files but no lungct compare"), ("model.json", "is a trained run")):
        other = tmp_path / f"other-{name}"
        other.mkdir()
        (other / name).write_text("keep")
        argv = ["compare", "--config", str(tmp_path / "c.yaml"), "--out", str(other), "-q"]
        assert main([*argv, "--archs", "small_cnn,mobilenetv2_100"]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert [p.name for p in other.iterdir()] == [name]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--bootstrap", "0"),
        ("--bootstrap", "-5"),
        ("--accuracy-tolerance", "nan"),
        ("--accuracy-tolerance", "-0.1"),
        ("--latency-budget-ms", "-1"),
        ("--latency-budget-ms", "nan"),
    ],
)
def test_compare_numbers_out_of_range_are_refused_before_training(tiny_dataset, tmp_path, capsys, option, value):
    save_config(tiny_config(tiny_dataset), tmp_path / "c.yaml")
    argv = ["compare", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), "-q", "--no-track"]
    assert main([*argv, "--archs", "small_cnn,mnasnet_100", option, value]) == 1
    err = capsys.readouterr().err
    assert f"lungct: error: {option} must be" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # refused before a backbone trained
