"""Study-level decisions with each aggregation lungct's series prediction offers (max, mean, top-k mean).

Usage: python benchmarks/model_quality/study_aggregation.py NAME [...]   (finished cv rows in runs/model_quality/)
-> runs/model_quality/NAME/study_aggregation.json and a table on stdout.

The table's study columns aggregate a group's slices with the mean of their probability vectors. A clinician
running `lungct predict-series` chooses `--aggregate max|mean|topk`; this scores each choice on the same out-of-fold
predictions, using `lungct.inference.study.aggregate` itself:
- three-class: each class's slice probabilities are aggregated, renormalised, and the argmax is the study's label;
- malignant against the rest, as predict-series decides it: the aggregated malignant probability at 0.5,
  reported as the study's sensitivity and specificity for malignancy.
Mean ± sd over the 5 folds; nothing is fitted.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from oof import ROOT, read_oof, row_dir
from sklearn.metrics import balanced_accuracy_score

from lungct.inference.study import aggregate

METHODS = (("mean", 3), ("max", 1), ("topk", 3))


def fold_scores(y: np.ndarray, p: np.ndarray, groups: np.ndarray, classes: list[str], method: str, k: int) -> dict:
    names = np.unique(groups)
    gy = np.array([np.bincount(y[groups == g]).argmax() for g in names])
    gp = np.array([[aggregate(p[groups == g, c], method, k)[0] for c in range(len(classes))] for g in names])
    pred = (gp / gp.sum(1, keepdims=True)).argmax(1)
    m = classes.index("malignant")
    called = gp[:, m] >= 0.5
    out = {
        "study_accuracy": float((pred == gy).mean()),
        "study_balanced_accuracy": float(balanced_accuracy_score(gy, pred)),
        "malignant_sensitivity": float(called[gy == m].mean()),
        "malignant_specificity": float((~called[gy != m]).mean()),
    }
    for c, name in enumerate(classes):
        out[f"study_{name}_recall"] = float((pred[gy == c] == c).mean()) if (gy == c).any() else float("nan")
    return out


def main(names: list[str]) -> None:
    for name in names:
        o = read_oof(row_dir(name))
        fold, groups, y, p, classes = o.fold, o.groups, o.y, o.p, o.classes
        result = {}
        for method, k in METHODS:
            rows = [
                fold_scores(y[fold == f], p[fold == f], groups[fold == f], classes, method, k)
                for f in sorted(set(fold))
            ]
            result[method] = {
                m: [float(np.nanmean([r[m] for r in rows])), float(np.nanstd([r[m] for r in rows], ddof=1))]
                for m in rows[0]
            }
        (ROOT / "runs" / "model_quality" / name / "study_aggregation.json").write_text(
            json.dumps(result, indent=2) + "\n"
        )
        cols = list(result["mean"])
        print(f"{name}\n| aggregate | " + " | ".join(cols) + " |")
        for method, k in METHODS:
            label = f"{method} (k={k})" if method == "topk" else method
            print(
                f"| {label} | "
                + " | ".join(f"{result[method][c][0]:.3f} ± {result[method][c][1]:.3f}" for c in cols)
                + " |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
