"""`lungct calibrate`: fit a calibrator on the run's validation part, save it in the run, report before/after.

Fitting on validation and judging on test keeps the test part untouched by every choice made.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lungct.data.splits import load_split
from lungct.errors import LungCTError
from lungct.evaluation.calibration import (
    CALIBRATION_FILE,
    calibration_metrics,
    fit_calibrator,
    reliability_bins,
)
from lungct.inference import Predictor
from lungct.run import write_json


def raw_part_probabilities(predictor: Predictor, part: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels, uncalibrated probabilities) of one part of the run's split."""
    items = [i for i in load_split(predictor.run.split) if i.part == part]
    y = np.array([predictor.classes.index(i.label) for i in items], dtype=int)
    saved, predictor.calibration = predictor.calibration, None
    try:
        probs = predictor.predict_paths_array([i.path for i in items], progress)
    finally:
        predictor.calibration = saved
    return y, probs


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


def calibrate_run(run_dir: str | Path, method: str = "temperature", progress: bool = True) -> dict:
    """Fit on val, write RUN/calibration.json (used by Predictor) and RUN/calibration/ report and diagrams."""
    predictor = Predictor(run_dir)
    y_val, p_val = raw_part_probabilities(predictor, "val", progress)
    if len(y_val) == 0:
        raise LungCTError(f"{predictor.run.split} has no validation part to fit the calibration on")
    calibrator = fit_calibrator(y_val, p_val, method)
    report_dir = predictor.run.path / "calibration"
    report_dir.mkdir(exist_ok=True)
    report: dict = {**calibrator.to_dict(), "fitted_on": "val", "n_val": len(y_val), "parts": {}, "diagrams": {}}
    for part, (y, raw) in {"val": (y_val, p_val), "test": raw_part_probabilities(predictor, "test", progress)}.items():
        if len(y) == 0:
            continue
        cal = calibrator.apply(raw)
        report["parts"][part] = {
            "before": calibration_metrics(y, raw),
            "after": calibration_metrics(y, cal),
            "accuracy_before": float((raw.argmax(1) == y).mean()),
            "accuracy_after": float((cal.argmax(1) == y).mean()),
        }
        png = report_dir / f"reliability_{part}.png"
        plot_reliability(y, raw, cal, f"{part} part ({len(y)} images), {method} fitted on val", png)
        report["diagrams"][part] = str(png)
    write_json(report_dir / "report.json", report)
    write_json(predictor.run.path / CALIBRATION_FILE, {**calibrator.to_dict(), "fitted_on": "val", "n": len(y_val)})
    return report
