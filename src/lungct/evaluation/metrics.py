"""Classification metrics for metrics.json, computed with scikit-learn from labels and probabilities."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> list[dict]:
    """Top-label reliability table with equal-width confidence bins (empty bins left out).

    Written here because scikit-learn has only the binary calibration_curve, not a multi-class one.
    """
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    out = []
    for lo, hi in itertools.pairwise(np.linspace(0.0, 1.0, bins + 1)):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            out.append(
                {
                    "low": float(lo),
                    "high": float(hi),
                    "n": int(in_bin.sum()),
                    "confidence": float(conf[in_bin].mean()),
                    "accuracy": float(correct[in_bin].mean()),
                }
            )
    return out


def ece_of_bins(table: list[dict]) -> float:
    """Top-label ECE: the bin-size-weighted gap between accuracy and confidence."""
    n = sum(b["n"] for b in table)
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in table)) if n else 0.0


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    return ece_of_bins(reliability_bins(y_true, probs, bins))


def calibration_metrics(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict:
    """ECE and MCE (top label, equal-width bins), multi-class Brier score and NLL."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)  # float32 softmax rows sum to 1 only within 1e-7
    table = reliability_bins(y_true, probs, bins)
    n = len(y_true)
    gaps = [abs(b["accuracy"] - b["confidence"]) for b in table]
    return {
        "n": n,
        "ece": ece_of_bins(table),
        "mce": float(max(gaps)) if gaps else 0.0,
        **brier_and_nll(y_true, probs),
    }


def brier_and_nll(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Brier score and NLL, as scikit-learn's brier_score_loss and log_loss define them (Brier: summed over
    classes, 0..2, for three or more classes; the positive class's squared error, 0..1, for two).

    Two lines of numpy instead of scikit-learn's functions because the calibration intervals (paired group
    bootstrap in `lungct calibrate` and `lungct cv`) call this thousands of times per report, and
    scikit-learn's input validation costs about 8 ms a call, most of a cv report's time; the tests hold the
    two equal to scikit-learn's. Rows must sum to 1 (calibration_metrics normalises them).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    onehot = np.eye(probs.shape[1])[y_true]
    p_true = np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, 1.0)
    brier = ((probs - onehot) ** 2).sum(1).mean() / (2 if probs.shape[1] == 2 else 1)
    return {"brier": float(brier), "nll": float(-np.log(p_true).mean())}


def _auc(y_bin: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(y_bin, score)) if 0 < y_bin.sum() < len(y_bin) else None


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The mean recall of the classes in y_true. Data holding some of the model's classes only (a screening set of
    normal slices) is legitimate; sklearn's warning that y_pred has other classes says nothing the report does not."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        warnings.filterwarnings("ignore", "A single label was found in 'y_true' and 'y_pred'", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def binary_positive(classes: list[str], positive_class: str | None) -> str:
    """The class a two-class run's sensitivity and specificity are of: the configured one, else the second."""
    return positive_class if positive_class in classes else classes[1]


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], positive_class: str | None = None
) -> dict:
    """All headline and per-class metrics. AUC is None for a class absent from (or filling) y_true."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    y_pred = probs.argmax(1)
    labels = list(range(len(classes)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {}
    for k, name in enumerate(classes):
        tn = cm.sum() - cm[k, :].sum() - cm[:, k].sum() + cm[k, k]
        fp = cm[:, k].sum() - cm[k, k]
        per_class[name] = {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "specificity": float(tn / (tn + fp)) if tn + fp else None,
            "f1": float(f1[k]),
            "auc": _auc(y_true == k, probs[:, k]),
            "support": int(support[k]),
        }
    aucs = [c["auc"] for c in per_class.values() if c["auc"] is not None]
    result = {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "ece": expected_calibration_error(y_true, probs),
        "classes": per_class,
        "confusion_matrix": {"labels": list(classes), "matrix": cm.tolist()},
    }
    if len(classes) == 2:
        positive = binary_positive(classes, positive_class)
        result["positive_class"] = positive
        result["sensitivity"] = per_class[positive]["recall"]
        result["specificity"] = per_class[positive]["specificity"]
    return result


def text_report(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> str:
    return classification_report(
        y_true,
        np.asarray(probs).argmax(1),
        labels=list(range(len(classes))),
        target_names=classes,
        digits=3,
        zero_division=0,
    )


def flat_metrics_of_resample(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], positive_class: str | None = None
) -> dict[str, float | None]:
    """`flat_metrics(compute_metrics(...))` in numpy, for the bootstrap's 1000 resamples per report.

    The same numbers as compute_metrics' scikit-learn calls (tests/evaluation/test_metrics.py holds the two
    equal, missing classes included), written out because scikit-learn validates its inputs on each of the
    dozen calls compute_metrics makes: about 10 ms per resample, which made the confidence intervals most of
    an evaluation's time. AUC is Mann-Whitney's rank statistic, which is the ROC curve's trapezoid area.
    """
    from scipy.stats import rankdata

    y_true, probs = np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    n_classes = len(classes)
    y_pred = probs.argmax(1)
    cm = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp, support, predicted = np.diag(cm).astype(float), cm.sum(1), cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    negatives = len(y_true) - support
    tn = negatives - (predicted - tp)
    flat: dict[str, float | None] = {
        "accuracy": float(tp.sum() / len(y_true)),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(f1.mean()),
        "macro_auc": None,
        "ece": expected_calibration_error(y_true, probs),
    }
    aucs = []
    for k, name in enumerate(classes):
        auc = None
        if 0 < support[k] < len(y_true):
            ranks = rankdata(probs[:, k])
            auc = float((ranks[y_true == k].sum() - support[k] * (support[k] + 1) / 2) / (support[k] * negatives[k]))
            aucs.append(auc)
        flat[f"{name}.precision"] = float(precision[k])
        flat[f"{name}.recall"] = float(recall[k])
        flat[f"{name}.specificity"] = float(tn[k] / negatives[k]) if negatives[k] else None
        flat[f"{name}.f1"] = float(f1[k])
        flat[f"{name}.auc"] = auc
    flat["macro_auc"] = float(np.mean(aucs)) if aucs else None
    if n_classes == 2:
        positive = binary_positive(classes, positive_class)
        flat["sensitivity"] = flat[f"{positive}.recall"]
        flat["specificity"] = flat[f"{positive}.specificity"]
    return flat
