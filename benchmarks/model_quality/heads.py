"""Screening the head on cached frozen features: is the linear probe's ceiling the head or the features?

Same 5 group folds, same features (full-224-avg from `extract.py 224 full`), same protocol as `screen.py`
(fit on each fold's train+val with both flips as samples, score the test part averaging the flips, fixed
hyperparameters chosen before looking at any test part). Rows:
- non-linear heads from scikit-learn: RBF SVM, k nearest neighbours, gradient-boosted trees;
- study context: each slice's features joined with the mean or max of its group's features (the group is the
  patient proxy, as in the study-level figures), the feature-level form of "one result per study".
Usage: python benchmarks/model_quality/heads.py [--output benchmarks/results/heads_screen.json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from screen import SCREEN, SCREEN_C, fold_metrics, load
from sklearn.base import ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC


def probe() -> ClassifierMixin:
    return make_pipeline(StandardScaler(), LogisticRegression(C=SCREEN_C, class_weight="balanced", max_iter=3000))


HEADS: dict[str, Callable[[], ClassifierMixin]] = {
    "linear probe (C 0.01, the screen's head)": probe,
    "RBF SVM, C 1": lambda: make_pipeline(
        StandardScaler(), SVC(C=1, class_weight="balanced", probability=True, random_state=0)
    ),
    "RBF SVM, C 10": lambda: make_pipeline(
        StandardScaler(), SVC(C=10, class_weight="balanced", probability=True, random_state=0)
    ),
    "k nearest neighbours (k 15, distance-weighted, on 64 PCA components)": lambda: make_pipeline(
        StandardScaler(), PCA(64, random_state=0), KNeighborsClassifier(15, weights="distance")
    ),
    "gradient-boosted trees (200 rounds, on 64 PCA components)": lambda: make_pipeline(
        PCA(64, random_state=0),
        HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, class_weight="balanced", random_state=0),
    ),
}


def with_group(x: np.ndarray, groups: np.ndarray, how: str) -> np.ndarray:
    """Each slice's features (n, flips, d) joined with its group's mean or max over slices."""
    ctx = np.empty_like(x)
    for g in np.unique(groups):
        rows = groups == g
        ctx[rows] = x[rows].mean(0) if how == "mean" else x[rows].max(0)
    return np.concatenate([x, ctx], axis=-1)


def score(x: np.ndarray, make: Callable[[], ClassifierMixin], pool: dict, classes: list[str]) -> dict:
    y = np.array([classes.index(label) for label in pool["labels"]])
    groups, folds, t0 = pool["groups"], [], time.time()
    for k in range(5):
        test = pool["parts"][k] == "test"
        dev = ~test
        n, views, d = x[dev].shape
        head = make().fit(x[dev].reshape(n * views, d), np.repeat(y[dev], views))
        m = int(test.sum())
        p = head.predict_proba(x[test].reshape(m * views, d)).reshape(m, views, -1).mean(1)
        folds.append(fold_metrics(y[test], p, groups[test], classes))
    out: dict = {"seconds": round(time.time() - t0, 1)}
    for key in folds[0]:
        v = np.array([f[key] for f in folds])
        out[key] = {"mean": round(float(np.nanmean(v)), 3), "sd": round(float(np.nanstd(v, ddof=1)), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/heads_screen.json"))
    args = parser.parse_args()
    z = np.load(SCREEN / "pool.npz", allow_pickle=False)
    pool = {k: z[k] for k in z.files}
    classes = sorted(set(pool["labels"].tolist()))
    x = load("full", 224, "avg")
    rows = {name: (x, make) for name, make in HEADS.items()}
    for how in ("mean", "max"):
        rows[f"study context: slice + its group's {how} (linear probe)"] = (with_group(x, pool["groups"], how), probe)
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's convergence and future warnings, one per fold
        for name, (features, make) in rows.items():
            results[name] = score(features, make, pool, classes)
            r = results[name]
            print(
                f"{name}: bal. acc {r['balanced_accuracy']['mean']:.3f} ± {r['balanced_accuracy']['sd']:.3f}, "
                f"benign rec. {r['benign_recall']['mean']:.3f}, malignant rec. {r['malignant_recall']['mean']:.3f}",
                flush=True,
            )
    args.output.write_text(json.dumps({"features": "full-224-avg", "rows": results}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
