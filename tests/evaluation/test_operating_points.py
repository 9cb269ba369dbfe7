"""Operating points: the validation threshold reaches the target sensitivity; refer bands trade coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungct.cli import main
from lungct.errors import LungCTError
from lungct.evaluation.operating_points import binary_rates, coverage_curve, threshold_for_sensitivity
from lungct.training import train
from tests.conftest import tiny_config, write_dataset


def test_threshold_reaches_target_sensitivity():
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.4
    score = np.clip(positive * 0.3 + rng.random(400) * 0.7, 0, 1)
    for target in (0.8, 0.95, 0.99):
        t = threshold_for_sensitivity(positive, score, target)
        rates = binary_rates(positive, score, t)
        assert rates["sensitivity"] >= target
        # The highest such threshold: nudging it up loses sensitivity below the target.
        assert binary_rates(positive, score, t + 1e-9)["sensitivity"] < target
    strict = binary_rates(positive, score, threshold_for_sensitivity(positive, score, 0.99))
    loose = binary_rates(positive, score, threshold_for_sensitivity(positive, score, 0.8))
    assert strict["specificity"] <= loose["specificity"]
    with pytest.raises(LungCTError, match="both positive and negative"):
        threshold_for_sensitivity(np.ones(5, bool), np.ones(5), 0.9)


def test_coverage_falls_and_accuracy_rises_as_more_is_referred():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.34, 1.0, 1000)
    y = np.zeros(1000, int)
    pred_right = rng.random(1000) < conf  # confident predictions are right more often
    probs = np.stack([np.where(pred_right, conf, (1 - conf) / 2), np.where(pred_right, (1 - conf) / 2, conf)], 1)
    probs = np.c_[probs, 1 - probs.sum(1)]
    rows = coverage_curve(y, probs)
    coverage = [r["coverage"] for r in rows]
    assert coverage == sorted(coverage, reverse=True)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.15


def test_threshold_command_on_a_tiny_run(tmp_path, fake_pretrained, capsys):
    run = train(tiny_config(write_dataset(tmp_path / "data"), fake_pretrained), tmp_path / "run", progress=False)
    argv = ["threshold", "--run", str(run.path), "--out", str(tmp_path / "op"), "--sensitivity", "0.9"]
    assert main([*argv, "--refer-below", "0.6", "-q"]) == 0
    report = json.loads((tmp_path / "op" / "operating_points.json").read_text())
    assert report["positive_class"] == "malignant" and report["val"]["sensitivity"] >= 0.9
    assert (tmp_path / "op" / "coverage_accuracy.png").is_file()
    capsys.readouterr()
    assert main([*argv, "--positive", "tumour", "-q"]) == 1
    assert "not one of the model's classes" in capsys.readouterr().err

    # a split without a test part (a fold ensemble's): one line, before any folder is made or slice predicted
    split = run.split.read_text().splitlines()
    run.split.write_text("\n".join(line for line in split if not line.endswith(",test")) + "\n")
    argv[argv.index("--out") + 1] = str(tmp_path / "none")
    assert main([*argv, "-q"]) == 1
    err = capsys.readouterr().err
    assert "has no test part: the threshold is chosen on the val part and measured on the test part" in err
    assert not (tmp_path / "none").exists()
