"""Classification metrics for metrics.json, computed with scikit-learn from labels and probabilities."""

from __future__ import annotations

import itertools

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
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
    labels = list(range(probs.shape[1]))
    return {
        "n": n,
        "ece": ece_of_bins(table),
        "mce": float(max(gaps)) if gaps else 0.0,
        "brier": float(brier_score_loss(y_true, probs, labels=labels)),
        "nll": float(log_loss(y_true, np.clip(probs, 1e-12, 1.0), labels=labels)),
    }


def _auc(y_bin: np.ndarray, score: np.ndarray) -> float | None:
    return float(roc_auc_score(y_bin, score)) if 0 < y_bin.sum() < len(y_bin) else None


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
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "ece": expected_calibration_error(y_true, probs),
        "classes": per_class,
        "confusion_matrix": {"labels": list(classes), "matrix": cm.tolist()},
    }
    if len(classes) == 2:
        positive = positive_class if positive_class in classes else classes[1]
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
