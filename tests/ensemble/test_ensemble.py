"""An ensemble of cv fold models is one run: it predicts the members' mean and every command takes it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from lungct.cli import main
from lungct.crossval.folds import cross_validate
from lungct.data.splits import load_split
from lungct.ensemble import build_ensemble
from lungct.errors import LungCTError
from lungct.evaluation.familiarity import reference_parts
from lungct.explain import Explainer
from lungct.export import export_onnx
from lungct.inference import Predictor
from lungct.inference.familiarity import FAMILIARITY_FILE
from lungct.run import RunDir, load_model
from lungct.training import train
from tests.conftest import tiny_config, write_dataset


@pytest.fixture(scope="module")
def within(tmp_path_factory, fake_pretrained) -> tuple[Path, Path, Path]:
    """A tiny run, a 2-fold cv within its development images (fine-tuned members), and their ensemble."""
    root = tmp_path_factory.mktemp("ensemble")
    cfg = tiny_config(write_dataset(root / "data", per_class=14), fake_pretrained)
    cfg.model.input_size = 64  # Grad-CAM needs a 2x2 last block
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 1
    run = train(cfg, root / "run", progress=False).path
    cross_validate(cfg, 2, root / "cv", progress=False, n_bootstrap=20, within=run)
    build_ensemble(root / "cv", root / "ensemble")
    return run, root / "cv", root / "ensemble"


def _inputs(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def test_probabilities_are_the_mean_of_the_members(within):
    _, cv, ensemble = within
    model, card = load_model(RunDir(ensemble))
    assert card.members == 2 and not card.shared_backbone  # fine-tuned members keep their own backbones
    x = _inputs()
    with torch.no_grad():
        ours = torch.softmax(model(x), 1)
        members = [torch.softmax(load_model(RunDir(cv / f"fold_{k}"))[0](x), 1) for k in (1, 2)]
    expected = (members[0] + members[1]) / 2
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(members[0], members[1], atol=1e-3)  # the members really differ


def test_ensemble_keeps_the_runs_untouched_test_part(within):
    run, _, ensemble = within
    original = (run / "split.csv").read_text()
    assert (ensemble / "split.csv").read_text() == original
    assert ",test\n" in original


def test_predict_evaluate_and_explain_take_the_ensemble(within, tmp_path):
    run, _, ensemble = within
    predictor = Predictor(ensemble, backend="torch")
    slices = sorted((run.parent / "data").rglob("*.png"))[:3]
    results = list(predictor.predict(slices))
    assert all("probabilities" in r for r in results)
    assert main(["evaluate", "--run", str(ensemble), "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == sum(
        1 for line in (ensemble / "split.csv").read_text().splitlines() if line.endswith(",test")
    )
    explanation = Explainer(ensemble).explain_paths(slices[:1]).__next__()
    assert explanation.layers == ["backbones.0.conv_head", "backbones.1.conv_head"]  # both members' maps
    assert np.isfinite(explanation.heatmap).all() and explanation.heatmap.max() > 0


def test_onnx_export_matches_pytorch_and_serves(within, tmp_path):
    import shutil

    from lungct.serve import ServeSettings, create_app

    _, _, ensemble = within
    copy = tmp_path / "ens"
    shutil.copytree(ensemble, copy)
    info = export_onnx(copy)
    assert info["check"]["max_abs_diff"]["probabilities"] < 1e-4
    onnx_probs = Predictor(copy, backend="onnx").probabilities(_inputs())
    torch_probs = Predictor(copy, backend="torch").probabilities(_inputs())
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)
    slice_path = next((ensemble.parent / "data").rglob("*.png"))
    settings = ServeSettings(run=copy, log_path=tmp_path / "log.sqlite")
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/predict", files={"file": (slice_path.name, slice_path.read_bytes(), "image/png")})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["probabilities"]) == {"benign", "malignant", "normal"}


def test_unfinished_cv_folder_is_refused(tmp_path):
    (tmp_path / "cv").mkdir()
    with pytest.raises(LungCTError, match="not a finished"):
        build_ensemble(tmp_path / "cv", tmp_path / "out")


def test_an_ensemble_run_given_as_cv_folder_is_named_as_a_run(within, tmp_path):
    _, _, ensemble = within
    assert (ensemble / "cv.json").is_file()  # it keeps its folds' record, which made it look like a cv folder
    with pytest.raises(LungCTError, match=f"{ensemble} is a run, not a `lungct cv` folder"):
        build_ensemble(ensemble, tmp_path / "again")


@pytest.mark.parametrize("where", ["cv", "fold", "parent"])
def test_out_never_overlaps_the_cv_folder_even_with_overwrite(within, where):
    """--overwrite cleared --out before reading the members: the whole cv folder (or a fold) was deleted."""
    _, cv, _ = within
    out = {"cv": cv, "fold": cv / "fold_1", "parent": cv.parent}[where]
    before = sorted(p.relative_to(cv) for p in cv.rglob("*"))
    with pytest.raises(LungCTError, match="is, holds or lies inside the cv folder"):
        build_ensemble(cv, out, overwrite=True)
    assert sorted(p.relative_to(cv) for p in cv.rglob("*")) == before


def test_an_ensemble_of_fine_tuned_members_refuses_a_familiarity_reference(within, capsys):
    _, _, ensemble = within
    assert main(["familiarity", "--run", str(ensemble), "-q"]) == 1
    err = capsys.readouterr().err
    assert "is an ensemble of fine-tuned members" in err and len(err.strip().splitlines()) == 1
    assert not (ensemble / FAMILIARITY_FILE).exists()


def test_probe_folds_share_one_backbone(tmp_path, fake_pretrained, capsys):
    cfg = tiny_config(write_dataset(tmp_path / "data", per_class=14), fake_pretrained)
    cfg.train.phase1.solver = "logistic"
    cfg.train.phase1.c = 1.0
    cfg.train.phase2.epochs = 0
    cross_validate(cfg, 2, tmp_path / "cv", progress=False, n_bootstrap=20)
    run = build_ensemble(tmp_path / "cv", tmp_path / "ens")
    model, card = load_model(run)
    assert card.shared_backbone and len(model.backbones) == 1 and len(model.heads) == 2
    assert "test" not in {line.rsplit(",", 1)[-1] for line in run.split.read_text().splitlines()[1:]}
    with pytest.raises(LungCTError, match="no test part"):
        from lungct.evaluation.evaluate import evaluate

        evaluate(run.path, tmp_path / "eval", progress=False)

    # Its split is all training data, yet the shared frozen backbone learnt from none of it: held-out groups set
    # the familiarity threshold, and the reference reaches its predictions.
    assert main(["familiarity", "--run", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"threshold from \d+% of the images, whole groups held out \(the members share one frozen", out)
    split = load_split(run.split)
    parts, _ = reference_parts(run, split, card)
    fit, held = set(parts["train"]), set(parts["val"])
    assert fit and held and not fit & held and fit | held == {i.path for i in split}
    group_of = {i.path: i.group for i in split}
    assert not {group_of[p] for p in fit} & {group_of[p] for p in held}  # whole groups, never a patient split
    slice_path = split[0].path
    line = next(Predictor(run.path, backend="torch").predict([slice_path]))
    assert isinstance(line["familiar"], bool) and line["novelty"] >= 0


def test_a_probe_ensemble_calibrates_on_its_own_folds_predictions(tmp_path, fake_pretrained, caplog, monkeypatch):
    """No validation part: refused before any prediction; its own cv folder's out-of-fold predictions (each image
    scored by the member that did not see it) fit it, with the warning this study measured, not one that the
    folds are another recipe's."""
    import logging

    from lungct.evaluation import calibrate as calibrate_module

    cfg = tiny_config(write_dataset(tmp_path / "data", per_class=14), fake_pretrained)
    cfg.train.phase1.solver = "logistic"
    cfg.train.phase2.epochs = 0
    cross_validate(cfg, 2, tmp_path / "cv", progress=False, n_bootstrap=20)
    run = build_ensemble(tmp_path / "cv", tmp_path / "ens")
    predicted = []
    original = calibrate_module.raw_part
    monkeypatch.setattr(calibrate_module, "raw_part", lambda *a: predicted.append(a[1]) or original(*a))
    with pytest.raises(LungCTError, match="has no val part to fit the calibration on"):
        calibrate_module.calibrate_run(run.path, progress=False)
    assert predicted == []  # refused before predicting anything
    with caplog.at_level(logging.INFO, logger="lungct"):
        report = calibrate_module.calibrate_run(run.path, progress=False, from_cv=tmp_path / "cv")
    assert report["cross_fitted"] and report["n_fit"] == len(load_split(run.split))
    assert "holds this ensemble's own folds, scored by single members" in caplog.text  # with what it measured
    assert "not within this run" not in caplog.text
    assert (run.path / "calibration.json").is_file()

    # Nor has it a val part for the drift reference's confidence and class mix: its folds' predictions stand in,
    # calibrated as the ensemble's own are, and `lungct drift` runs on it.
    from lungct.evaluation.oof import load_oof
    from lungct.monitoring.drift_reference import OUT_OF_FOLD, PREDICTION_PARTS, build_reference

    reference = build_reference(run.path, progress=False)
    oof = load_oof(tmp_path / "cv")
    stand_in = reference.select(PREDICTION_PARTS)
    assert set(stand_in.parts.tolist()) == {OUT_OF_FOLD} and len(stand_in) == len(oof.paths) == len(
        load_split(run.split)
    )
    calibrated = Predictor(run.path).calibration.apply(oof.probs)
    train_paths = [i.path for i in load_split(run.split)]
    np.testing.assert_allclose(stand_in.probabilities, calibrated[[oof.paths.index(p) for p in train_paths]], atol=1e-6)
    assert not np.allclose(stand_in.probabilities, reference.select(["train"]).probabilities, atol=1e-3)
