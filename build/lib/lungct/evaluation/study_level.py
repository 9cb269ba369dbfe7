"""Study-level figures: one result per group (the patient proxy), as a clinician decides per study.

IQ-OTH/NCCD labels whole cases, so a benign case's slices without a visible nodule are still "benign" and
look normal: slice-level recall understates what a per-study decision gets right. Each group's slices are
aggregated with the mean of their probability vectors (the multi-class counterpart of lungct.inference.study's
"mean"); the group's label is its slices' majority label (groups are single-label in practice).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score


def group_probabilities(
    y: np.ndarray, probs: np.ndarray, groups: list[str] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(label per group, mean probability vector per group), groups in sorted order."""
    groups = np.asarray(groups)
    names = np.unique(groups)
    labels = np.array([np.bincount(y[groups == g]).argmax() for g in names])
    return labels, np.stack([probs[groups == g].mean(0) for g in names])


def study_metrics(y: np.ndarray, probs: np.ndarray, groups, classes: list[str]) -> dict[str, float | None]:
    """Accuracy, balanced accuracy and per-class recall over groups (None for a class with no group)."""
    gy, gp = group_probabilities(np.asarray(y), np.asarray(probs), groups)
    pred = gp.argmax(1)
    out: dict[str, float | None] = {
        "study.n": float(len(gy)),
        "study.accuracy": float((pred == gy).mean()),
        "study.balanced_accuracy": float(balanced_accuracy_score(gy, pred)),
    }
    for k, name in enumerate(classes):
        out[f"study.{name}.recall"] = float((pred[gy == k] == k).mean()) if (gy == k).any() else None
    return out
