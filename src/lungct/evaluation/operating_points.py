"""Operating points: a threshold chosen on validation for a target sensitivity, judged on test; and a
"refer to a radiologist" band where the model abstains when its confidence is low.

The default argmax decision treats missing a cancer and a false alarm alike; a screening use wants the
sensitivity fixed first. Choosing the threshold on validation and reporting test figures keeps it honest.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve

from lungct.contracts import SplitPart
from lungct.data.splits import load_split, tuning_part
from lungct.errors import LungCTError
from lungct.evaluation.calibrate import raw_part
from lungct.files import output_folder
from lungct.inference import Predictor
from lungct.run import write_json


def threshold_for_sensitivity(positive: np.ndarray, score: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity (score >= threshold) reaches `target`."""
    if not 0 < positive.sum() < len(positive):
        raise LungCTError("the validation part needs both positive and negative images to choose a threshold")
    _, tpr, thresholds = roc_curve(positive, score, drop_intermediate=False)
    reached = np.flatnonzero(tpr >= target)
    return float(min(thresholds[reached[0]], 1.0))


def binary_rates(positive: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    tn, fp, fn, tp = confusion_matrix(positive, score >= threshold, labels=[False, True]).ravel()

    def ratio(a: int, b: int) -> float | None:
        return float(a / b) if b else None

    return {
        "n": len(positive),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }


def coverage_curve(y: np.ndarray, probs: np.ndarray) -> list[dict]:
    """Accuracy on the images kept when those with top-class confidence below each cut are referred."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    rows = []
    for cut in np.round(np.arange(0.3, 1.0, 0.05), 2):
        kept = conf >= cut
        rows.append(
            {
                "refer_below": float(cut),
                "coverage": float(kept.mean()),
                "accuracy": float(correct[kept].mean()) if kept.any() else None,
            }
        )
    return rows


def plot_coverage(rows: list[dict], out: Path) -> None:
    pts = [(r["coverage"], r["accuracy"], r["refer_below"]) for r in rows if r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
    for cov, acc, cut in pts[::2]:
        ax.annotate(f"{cut:.2f}", (cov, acc), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("coverage (share decided by the model)")
    ax.set_ylabel("accuracy on the decided images")
    ax.set_title("Refer-to-radiologist band (labels: confidence cut)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def operating_points(
    run_dir: str | Path,
    out_dir: str | Path,
    positive_class: str | None = None,
    target_sensitivity: float = 0.99,
    refer_below: float | None = None,
    progress: bool = True,
) -> dict:
    """Threshold on val for `target_sensitivity`; test sensitivity, specificity, PPV, NPV; refer band."""
    predictor = Predictor(run_dir)  # calibrated probabilities when the run has been calibrated
    classes = predictor.classes
    default = "malignant" if "malignant" in classes else None
    positive_class = positive_class or predictor.card.positive_class or default
    if positive_class not in classes:
        raise LungCTError(f"positive class {positive_class!r} is not one of the model's classes {classes}")
    if not 0 < target_sensitivity <= 1:
        raise LungCTError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    k = classes.index(positive_class)
    items = load_split(predictor.run.split)
    fit_part = tuning_part(items)
    for part in (fit_part, SplitPart.test):  # before the output folder and any prediction
        if not any(i.part == part for i in items):
            raise LungCTError(
                f"{predictor.run.split} has no {part} part: the threshold is chosen on the {fit_part} part and "
                "measured on the test part"
            )
    out = output_folder(out_dir, "--out")  # before predicting the two parts
    calibrator = predictor.calibration
    parts = {}
    for part in (fit_part, SplitPart.test):
        y, raw, _ = raw_part(predictor, part, progress)
        parts[part] = (y, raw if calibrator is None else calibrator.apply(raw))
    (y_val, p_val), (y_test, p_test) = parts[fit_part], parts[SplitPart.test]
    threshold = threshold_for_sensitivity(y_val == k, p_val[:, k], target_sensitivity)
    curve = coverage_curve(y_test, p_test)
    report: dict = {
        "positive_class": positive_class,
        "target_sensitivity": target_sensitivity,
        "threshold": threshold,
        "calibrated": calibrator is not None,
        "chosen_on": fit_part,
        fit_part: binary_rates(y_val == k, p_val[:, k], threshold),
        "test": binary_rates(y_test == k, p_test[:, k], threshold),
        "test_at_argmax": binary_rates(y_test == k, (p_test.argmax(1) == k).astype(float), 0.5),
        "coverage_curve_test": curve,
    }
    if refer_below is not None:
        kept = p_test.max(1) >= refer_below
        report["refer_band_test"] = {
            "refer_below": refer_below,
            "referred": int((~kept).sum()),
            "coverage": float(kept.mean()),
            "accuracy_on_decided": float((p_test.argmax(1) == y_test)[kept].mean()) if kept.any() else None,
        }
    plot_coverage(curve, out / "coverage_accuracy.png")
    write_json(out / "operating_points.json", report)
    return report
