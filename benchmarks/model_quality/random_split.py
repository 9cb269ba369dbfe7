"""The leak a random split hides, on cached frozen features: the same probe scored on 5 image-level folds
(StratifiedKFold, look-alike slices of one patient on both sides) and on the 5 group folds.

Usage: python benchmarks/model_quality/random_split.py [view-size-pool]
"""

from __future__ import annotations

import sys

import numpy as np
from screen import SCREEN, SCREEN_C, fit_head, fold_metrics, load
from sklearn.model_selection import StratifiedKFold


def main(name: str = "full-224-avg") -> None:
    view, size, pool_kind = name.split("-")
    x = load(view, int(size), pool_kind)
    z = np.load(SCREEN / "pool.npz")
    classes = sorted(set(z["labels"].tolist()))
    y = np.array([classes.index(lbl) for lbl in z["labels"]])
    groups = z["groups"]
    splits = {
        "random (image-level)": list(StratifiedKFold(5, shuffle=True, random_state=42).split(x[:, 0], y)),
        "group": [(np.flatnonzero(z["parts"][k] != "test"), np.flatnonzero(z["parts"][k] == "test")) for k in range(5)],
    }
    for split, folds in splits.items():
        rows = []
        for train, test in folds:
            f = fit_head(x[train], y[train], groups[train], SCREEN_C)
            rows.append(fold_metrics(y[test], f(x[test]), groups[test], classes))
        summary = {
            k: f"{np.mean([r[k] for r in rows]):.3f} ± {np.std([r[k] for r in rows], ddof=1):.3f}" for k in rows[0]
        }
        print(split, {k: summary[k] for k in ("accuracy", "balanced_accuracy", "benign_recall", "macro_auc")})


if __name__ == "__main__":
    main(*sys.argv[1:])
