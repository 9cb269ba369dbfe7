"""Drift reports: shifted inputs are flagged, unshifted ones are not, and too little data is no alarm."""

import hashlib

import numpy as np
import pytest
from PIL import Image, ImageOps
from scipy.stats import ks_2samp

from lungct.cli import main
from lungct.inference import Predictor
from lungct.monitoring.drift import DriftSettings, feature_test, group_windows, ks_distance, psi
from lungct.monitoring.drift_reference import (
    REFERENCE_FILE,
    STAT_KEYS,
    describe_images,
    load_reference,
    read_reference,
    save_reference,
)
from lungct.monitoring.drift_report import drift_report
from lungct.monitoring.predlog import PredictionLog, PredictionRecord
from lungct.run import RunDir, model_version
from lungct.training import train
from tests.conftest import IQ_OTH, MOBILENET_WEIGHTS, needs_shared, synthetic_slice, tiny_config, write_dataset

SETTINGS = DriftSettings(min_rows=30)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A small CNN trained from a seeded start on 60 synthetic slices per class (deterministic, unlike
    fake_pretrained's random weights); its training and validation parts are the drift reference."""
    root = tmp_path_factory.mktemp("drift")
    cfg = tiny_config(write_dataset(root / "data", per_class=60))
    cfg.model.arch = "small_cnn"
    return train(cfg, root / "run", progress=False).path


def _fresh_slices(n_per_class: int, seed: int) -> list[Image.Image]:
    """Held-out slices of the training distribution (seeds the dataset never used)."""
    return [synthetic_slice(k, seed + 1000 * k + i) for i in range(n_per_class) for k in range(3)]


def write_log(path, run_dir, images, embeddings=True, version=None) -> None:
    """Log the images as the server would: statistics, probabilities, label and pooled embedding."""
    predictor = Predictor(run_dir)
    obs = describe_images(predictor, images)
    version = version or model_version(RunDir(run_dir))
    log = PredictionLog(path)
    for i, img in enumerate(images):
        probs = dict(zip(predictor.classes, map(float, obs.probabilities[i]), strict=True))
        log.append(
            PredictionRecord(
                sha256=hashlib.sha256(img.tobytes()).hexdigest(),
                model_version=version,
                label=max(probs, key=probs.get),
                probabilities=probs,
                latency_ms=1.0,
                stats=dict(zip(STAT_KEYS, map(float, obs.stats[i]), strict=True)),
                source="api",
                embedding=obs.embeddings[i] if embeddings else None,
            )
        )
    log.close()


def test_unshifted_slices_pass_and_inverted_slices_are_flagged(tiny_run, tmp_path):
    fresh = _fresh_slices(15, seed=70_000)
    write_log(tmp_path / "same.db", tiny_run, fresh)
    same = drift_report(tiny_run, tmp_path / "same.db", tmp_path / "same", settings=SETTINGS, progress=False)
    assert same["verdict"] == "no drift", same["reasons"]
    assert not same["retraining_due"]
    assert {c["status"] for c in same["checks"].values()} == {"stable"}
    assert same["rows"]["selected"] == 45 and same["rows"]["with_embedding"] == 45
    assert (tiny_run / REFERENCE_FILE).is_file()

    write_log(tmp_path / "inverted.db", tiny_run, [ImageOps.invert(img) for img in fresh])
    shifted = drift_report(tiny_run, tmp_path / "inverted.db", tmp_path / "inv", settings=SETTINGS, progress=False)
    assert shifted["verdict"] == "retraining due" and shifted["retraining_due"]
    intensity = {f["feature"]: f for f in shifted["checks"]["intensity"]["features"]}
    assert intensity["mean"]["level"] == "drift" and intensity["mean"]["psi"] > 0.2
    assert intensity["width"]["level"] == "stable"  # the size did not change
    assert shifted["checks"]["embedding"]["status"] == "drift"
    assert any(r.startswith("intensity: mean drift") for r in shifted["reasons"])
    md = (tmp_path / "inv" / "drift.md").read_text()
    assert "**Verdict: retraining due**" in md and "| mean |" in md


def test_a_change_of_case_mix_alone_is_not_input_drift(tiny_run, tmp_path):
    only_texture = [synthetic_slice(2, 75_000 + i) for i in range(45)]  # all "normal" slices, none of the others
    write_log(tmp_path / "mix.db", tiny_run, only_texture)
    mix = drift_report(tiny_run, tmp_path / "mix.db", tmp_path / "mix", settings=SETTINGS, progress=False)
    assert mix["checks"]["class_mix"]["features"][0]["current_shares"]["normal"] == 1.0
    assert mix["checks"]["class_mix"]["status"] == "drift"  # reported as a change of case mix ...
    assert mix["checks"]["intensity"]["matched_to_recent_class_mix"] is True
    for check in ("intensity", "embedding", "confidence"):  # ... not as input drift (unmatched, all three drift)
        assert mix["checks"][check]["status"] == "stable", check
    assert mix["verdict"] == "watch" and not mix["retraining_due"]


def test_too_few_rows_and_rows_without_embeddings_are_not_an_alarm(tiny_run, tmp_path):
    inverted = [ImageOps.invert(img) for img in _fresh_slices(5, seed=80_000)]  # 15 rows, below min_rows
    write_log(tmp_path / "few.db", tiny_run, inverted)
    few = drift_report(tiny_run, tmp_path / "few.db", tmp_path / "few", settings=SETTINGS, progress=False)
    assert few["verdict"] == "not enough data" and not few["retraining_due"]

    # enough rows, but none with an embedding (e.g. an older server): the other checks still run
    write_log(tmp_path / "noemb.db", tiny_run, _fresh_slices(12, seed=90_000), embeddings=False)
    noemb = drift_report(tiny_run, tmp_path / "noemb.db", tmp_path / "noemb", settings=SETTINGS, progress=False)
    assert noemb["checks"]["embedding"]["status"] == "not enough data"
    assert noemb["checks"]["intensity"]["status"] == "stable"
    assert noemb["verdict"] == "no drift"

    # rows of another model version count for intensity only
    write_log(tmp_path / "old.db", tiny_run, _fresh_slices(12, seed=95_000), version="older-model")
    old = drift_report(tiny_run, tmp_path / "old.db", tmp_path / "old", settings=SETTINGS, progress=False)
    assert old["rows"]["this_model_version"] == 0
    assert old["checks"]["confidence"]["status"] == "not enough data"
    assert old["checks"]["intensity"]["n_current"] == 36


def test_reference_is_recomputed_when_the_model_version_changes(tiny_run):
    cache = tiny_run / REFERENCE_FILE
    ref = load_reference(tiny_run, progress=False)
    ref.model_version = "stale-version"
    save_reference(ref, cache)
    fresh = load_reference(tiny_run, progress=False)
    assert fresh.model_version == model_version(RunDir(tiny_run))
    assert read_reference(cache).model_version == fresh.model_version
    parts = [line.rsplit(",", 1)[1] for line in (tiny_run / "split.csv").read_text().splitlines()[1:]]
    assert sorted(fresh.parts.tolist()) == sorted(p for p in parts if p in ("train", "val"))  # never the test part


def _clustered(rng, n_groups: int, shift: float = 0.0, per_group: int = 10):
    """Values of patients whose slices look alike: a group mean plus a little within-group noise."""
    means = rng.normal(shift, 1.0, n_groups)
    values = np.concatenate([rng.normal(m, 0.1, per_group) for m in means])
    return values, np.repeat([f"g{i}" for i in range(n_groups)], per_group)


def test_group_null_does_not_call_patient_variation_drift_but_catches_a_shift():
    rng = np.random.default_rng(3)
    ref_values, groups = _clustered(rng, 60)
    new_patients, _ = _clustered(rng, 5)  # 50 slices of 5 new patients from the same population
    s = DriftSettings(resamples=500)
    windows = group_windows(groups, len(new_patients), s)
    assert all(len(set(groups[w])) == len(set(groups[w]) - set(groups[~w])) for w in windows[:20])  # whole groups
    same = feature_test("mean", ref_values, new_patients, windows, 1, s)
    assert same["ks_p_iid"] < 0.01  # the textbook test, assuming independent slices, would raise an alarm
    assert same["level"] == "stable" and same["p_value"] > 0.05
    shifted, _ = _clustered(rng, 5, shift=4.0)
    assert feature_test("mean", ref_values, shifted, windows, 1, s)["level"] == "drift"


def test_ks_distance_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 200), rng.normal(0.3, 1.2, 57)
    assert ks_distance(a, b) == pytest.approx(ks_2samp(a, b).statistic)


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    assert psi(ref, rng.normal(0, 1, 5000)) < 0.02
    assert psi(ref, rng.normal(1.5, 1, 5000)) > 1.0
    assert psi(np.full(100, 512.0), np.full(50, 512.0)) == pytest.approx(0.0)  # constant sizes: no false alarm


def test_drift_cli_exit_codes_and_one_line_errors(tiny_run, tmp_path, capsys):
    write_log(tmp_path / "inv.db", tiny_run, [ImageOps.invert(img) for img in _fresh_slices(12, seed=60_000)])
    argv = ["drift", "--run", str(tiny_run), "--log", str(tmp_path / "inv.db"), "--out", str(tmp_path / "r"), "-q"]
    assert main(argv) == 0
    assert "verdict: retraining due" in capsys.readouterr().out
    assert main([*argv, "--fail-on-drift"]) == 3
    capsys.readouterr()
    assert main(["drift", "--run", str(tiny_run), "--log", str(tmp_path / "missing.db")]) == 1
    err = capsys.readouterr().err
    assert "prediction log not found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "taken").write_text("a file")  # --out in the way: one line, before the reference is built
    assert main([*argv[:-3], "--out", str(tmp_path / "taken"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "taken cannot be used: exists and is not a folder" in err and len(err.strip().splitlines()) == 1


def _rewindow(img: Image.Image) -> Image.Image:
    """A narrower display window: grey levels stretched around the middle (what another export could do)."""
    a = np.asarray(img, dtype=np.float32)
    return Image.fromarray(np.clip((a - 60.0) * 1.8, 0, 255).astype(np.uint8), mode="L")


@needs_shared
@pytest.mark.realdata
def test_real_slices_unseen_pass_and_rewindowed_are_flagged(tmp_path):
    """A small model on 80 real slices per class; unseen real slices pass, re-windowed ones are flagged."""
    cfg = tiny_config(IQ_OTH, MOBILENET_WEIGHTS)
    cfg.data.max_images_per_class = 80
    cfg.model.input_size = 64
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 1, 1
    run = train(cfg, tmp_path / "run", progress=False).path
    used = {line.split(",")[0] for line in (run / "split.csv").read_text().splitlines()[1:]}
    unseen = [p for folder in sorted(IQ_OTH.iterdir()) if folder.is_dir() for p in sorted(folder.glob("*.jpg"))[::7]]
    unseen = [p for p in unseen if str(p) not in used][:60]
    pre = Predictor(run).card.preprocess
    slices = [pre.load(p) for p in unseen]
    write_log(tmp_path / "same.db", run, slices)
    same = drift_report(run, tmp_path / "same.db", tmp_path / "same", settings=SETTINGS, progress=False)
    assert not same["retraining_due"], same["reasons"]
    write_log(tmp_path / "win.db", run, [_rewindow(s) for s in slices])
    shifted = drift_report(run, tmp_path / "win.db", tmp_path / "win", settings=SETTINGS, progress=False)
    assert shifted["retraining_due"] and shifted["checks"]["intensity"]["status"] == "drift"
