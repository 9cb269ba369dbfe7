"""`lungct calibrate`: fit a calibrator on the run's validation part, save it in the run, report before/after.

Fitting on validation and judging on test keeps the test part untouched by every choice made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lungct.contracts import SplitPart
from lungct.data.splits import load_split, tuning_part
from lungct.errors import LungCTError
from lungct.evaluation.bootstrap import paired_delta_ci
from lungct.evaluation.metrics import calibration_metrics, reliability_bins
from lungct.inference import Predictor
from lungct.inference.calibration import CALIBRATION_FILE, check_method, fit_calibrator, fit_temperature
from lungct.run import write_json

log = logging.getLogger("lungct")


def raw_part(predictor: Predictor, part: str, progress: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, uncalibrated probabilities, groups) of one part of the run's split."""
    items = [i for i in load_split(predictor.run.split) if i.part == part]
    y = np.array([predictor.classes.index(i.label) for i in items], dtype=int)
    probs = predictor.predict_paths_array([i.path for i in items], progress, calibrated=False)
    return y, probs, [i.group for i in items]


def plot_reliability(y: np.ndarray, before: np.ndarray, after: np.ndarray, title: str, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, probs, name in zip(axes, (before, after), ("before", "after"), strict=True):
        table = reliability_bins(y, probs)
        m = calibration_metrics(y, probs)
        centres = [(b["low"] + b["high"]) / 2 for b in table]
        ax.bar(centres, [b["accuracy"] for b in table], width=1 / 15, edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        ax.plot([b["confidence"] for b in table], [b["accuracy"] for b in table], "o", color="C1", label="bin mean")
        ax.set_title(f"{name} calibration: ECE {m['ece']:.3f}, MCE {m['mce']:.3f}")
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def calibration_change(y: np.ndarray, before: np.ndarray, after: np.ndarray, groups: list[str]) -> dict:
    """Paired group-bootstrap intervals of after-minus-before ECE, NLL and Brier (negative = better)."""

    def delta(key: str):
        return lambda i: calibration_metrics(y[i], after[i])[key] - calibration_metrics(y[i], before[i])[key]

    return {key: paired_delta_ci(delta(key), len(y), groups, n_resamples=300) for key in ("ece", "nll", "brier")}


@dataclass
class HeldOutCheck:
    """A temperature fitted on a run's tuning part and what it does to that run's test part."""

    temperature: float
    y: np.ndarray
    before: np.ndarray  # raw test probabilities
    after: np.ndarray  # calibrated test probabilities
    groups: list[str]


def temperature_check(run_dir: str | Path, progress: bool = False) -> HeldOutCheck:
    """Fit a temperature as `lungct calibrate` would, without saving it, and apply it to the test part.

    Cross-validation calls this per fold: five group splits say more about whether calibration helps a recipe
    than one test part of a few dozen patients.
    """
    predictor = Predictor(run_dir)  # raw_part sets any saved calibration aside
    fit_part = tuning_part(load_split(predictor.run.split))
    y_fit, p_fit, _ = raw_part(predictor, fit_part, progress)
    if len(y_fit) == 0:
        raise LungCTError(f"{predictor.run.split} has no {fit_part} part to fit the calibration on")
    scaler = fit_temperature(y_fit, p_fit)
    y, raw, groups = raw_part(predictor, SplitPart.test, progress)
    return HeldOutCheck(scaler.temperature, y, raw, scaler.apply(raw), groups)


def cross_fitted(predictor: Predictor, cv_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of `lungct cv --within RUN` out-of-fold predictions, checked against this run.

    Refused when any of them is one of the run's test images: a temperature fitted on those would be judged on
    the images it was fitted on.
    """
    from lungct.evaluation.oof import load_oof

    oof = load_oof(cv_dir)
    if oof.classes != predictor.classes:
        raise LungCTError(f"{cv_dir} predicts {oof.classes}, but the run's classes are {predictor.classes}")
    test = {i.path for i in load_split(predictor.run.split) if i.part == SplitPart.test}
    leaked = sum(p in test for p in oof.paths)
    if leaked:
        raise LungCTError(
            f"{leaked} of the out-of-fold images in {cv_dir} are in the run's test part; "
            f"make the folds with `lungct cv --within {predictor.run.path}`"
        )
    if predictor.run.ensemble_source() == str(Path(cv_dir).resolve()):
        # the ensemble's own folds: each image scored by the one member that did not train on it. Averaging already
        # softens the members' probabilities, and this temperature softens them again (docs/model-quality.md,
        # Ensembles: test ECE rose in 5 of 5 outer folds for the default's probe ensemble, in 4 of 5 for LP-FT's)
        log.warning(
            "%s holds this ensemble's own folds, scored by single members: their temperature over-softens the "
            "ensemble's mean (test ECE 0.085 -> 0.137 on the default's nested probe ensemble, docs/model-quality.md)",
            cv_dir,
        )
    elif oof.within_run != str(predictor.run.path.resolve()):
        made = f"within {oof.within_run}" if oof.within_run else "without --within"
        log.warning("%s was made %s, not within this run; check it used the same recipe", cv_dir, made)
    y = np.array([predictor.classes.index(label) for label in oof.labels], dtype=int)
    return y, oof.probs


def calibrate_run(
    run_dir: str | Path, method: str = "temperature", progress: bool = True, from_cv: str | Path | None = None
) -> dict:
    """Fit on the calibration part (or val), write RUN/calibration.json and RUN/calibration/ report and diagrams.

    `from_cv`: fit instead on the pooled out-of-fold predictions of `lungct cv --within RUN` (hundreds of
    held-out images rather than one part of a hundred). The test part only measures: its before/after change
    comes with a paired group-bootstrap interval, since a test set of a few dozen patients cannot tell a 0.01
    change in ECE from noise.
    """
    check_method(method)  # before minutes of prediction
    predictor = Predictor(run_dir)
    items = load_split(predictor.run.split)
    fit_part = tuning_part(items)
    present = {i.part for i in items}
    if from_cv is None and fit_part not in present:  # before predicting the parts there are
        raise LungCTError(f"{predictor.run.split} has no {fit_part} part to fit the calibration on")
    wanted = dict.fromkeys([fit_part, SplitPart.val, SplitPart.test])
    parts = {p: raw_part(predictor, p, progress) for p in wanted if p in present}
    if from_cv is not None:
        y_fit, p_fit = cross_fitted(predictor, from_cv)
        fit_part = f"out-of-fold predictions of {from_cv}"
    else:
        y_fit, p_fit, _ = parts[fit_part]
    if len(y_fit) == 0:
        raise LungCTError(f"{predictor.run.split} has no {fit_part} part to fit the calibration on")
    calibrator = fit_calibrator(y_fit, p_fit, method)
    report_dir = predictor.run.path / "calibration"
    report_dir.mkdir(exist_ok=True)
    report: dict = {
        **calibrator.to_dict(),
        "fitted_on": fit_part,
        "cross_fitted": from_cv is not None,
        "n_fit": len(y_fit),
        "parts": {},
        "diagrams": {},
    }
    for part, (y, raw, groups) in parts.items():
        if len(y) == 0:
            continue
        cal = calibrator.apply(raw)
        report["parts"][part] = {
            "before": calibration_metrics(y, raw),
            "after": calibration_metrics(y, cal),
            "accuracy_before": float((raw.argmax(1) == y).mean()),
            "accuracy_after": float((cal.argmax(1) == y).mean()),
        }
        if part == SplitPart.test:
            report["test_change"] = calibration_change(y, raw, cal, groups)
        png = report_dir / f"reliability_{part}.png"
        plot_reliability(y, raw, cal, f"{part} part ({len(y)} images), {method} fitted on {fit_part}", png)
        report["diagrams"][part] = str(png)
    write_json(report_dir / "report.json", report)
    write_json(predictor.run.path / CALIBRATION_FILE, {**calibrator.to_dict(), "fitted_on": fit_part, "n": len(y_fit)})
    return report
