"""Cross-fitted calibration: cv within a run folds over its development images only, and `calibrate --from-cv`
fits on their pooled out-of-fold predictions, refusing any that are the run's test images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lungct.cli import main
from lungct.crossval.folds import cross_validate
from lungct.data.splits import load_split
from lungct.errors import LungCTError
from lungct.evaluation.calibrate import calibrate_run
from lungct.evaluation.oof import OOF_FILE, load_oof
from lungct.training import train
from tests.conftest import tiny_config, write_dataset


@pytest.fixture(scope="module")
def run_and_cv(tmp_path_factory, fake_pretrained):
    root = tmp_path_factory.mktemp("xfit")
    cfg = tiny_config(write_dataset(root / "data", per_class=14), fake_pretrained)
    run = train(cfg, root / "run", progress=False).path
    result = cross_validate(cfg, 3, root / "cv", progress=False, n_bootstrap=20, within=run)
    return run, root / "cv", result


def test_cv_within_a_run_folds_over_its_development_images_only(run_and_cv):
    run, cv_dir, result = run_and_cv
    items = load_split(run / "split.csv")
    development = sorted(i.path for i in items if i.part != "test")
    oof = load_oof(cv_dir)
    assert sorted(oof.paths) == development  # every development image predicted once, no test image
    assert result["within_run"] == str(run.resolve()) and result["n_images"] == len(development)
    assert oof.probs.shape == (len(development), 3)
    np.testing.assert_allclose(oof.probs.sum(1), 1.0, atol=1e-4)
    with (cv_dir / OOF_FILE).open(newline="") as fh:
        folds = {int(r["fold"]) for r in csv.DictReader(fh)}
    assert folds == {1, 2, 3}
    assert "its test part was left out" in (cv_dir / "cv.md").read_text()


def test_calibrate_from_cv_fits_on_the_out_of_fold_predictions(run_and_cv, tmp_path, capsys):
    import shutil

    run, cv_dir, _ = run_and_cv
    run = shutil.copytree(run, tmp_path / "run")
    assert main(["calibrate", "--run", str(run), "--from-cv", str(cv_dir), "-q"]) == 0
    out = capsys.readouterr().out
    n_dev = sum(i.part != "test" for i in load_split(run / "split.csv"))
    assert f"fitted on {n_dev} out-of-fold predictions" in out
    report = json.loads((run / "calibration" / "report.json").read_text())
    assert report["n_fit"] == n_dev and str(cv_dir) in report["fitted_on"]
    assert {"val", "test"} <= set(report["parts"])
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["method"] == "temperature" and saved["n"] == n_dev


def test_calibrate_from_cv_refuses_out_of_fold_images_from_the_test_part(run_and_cv, tmp_path):
    import shutil

    run, cv_dir, _ = run_and_cv
    leaky = shutil.copytree(cv_dir, tmp_path / "leaky", ignore=shutil.ignore_patterns("fold_*"))
    test_item = next(i for i in load_split(run / "split.csv") if i.part == "test")
    with (leaky / OOF_FILE).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows.append({**rows[0], "path": test_item.path, "label": test_item.label})
    with (leaky / OOF_FILE).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(LungCTError, match=r"1 of the out-of-fold images .* are in the run's test part"):
        calibrate_run(run, progress=False, from_cv=leaky)
    (leaky / "cv.json").unlink()
    with pytest.raises(LungCTError, match="not a finished `lungct cv` folder"):
        calibrate_run(run, progress=False, from_cv=leaky)
