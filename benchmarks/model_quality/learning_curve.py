"""Learning curve on the same 5 group folds: benign recall and balanced accuracy against training groups.

The frozen MobileNetV2 probe (cached features, runs/screen) is refitted on a random share of each fold's
development groups (stratified by class, 3 draws per share); the fold's test part is unchanged.
A curve still rising at 100% says more patients would help; a flat one says the method is the limit.
Usage: python benchmarks/model_quality/learning_curve.py [view-size-pool]  -> runs/screen/learning_curve.csv
"""

from __future__ import annotations

import csv
import sys

import numpy as np
from screen import SCREEN, SCREEN_C, fit_head, fold_metrics, load

SHARES = (0.25, 0.5, 0.75, 1.0)
DRAWS = 3


def main(name: str = "full-224-avg") -> None:
    view, size, pool_kind = name.split("-")
    x = load(view, int(size), pool_kind)
    z = np.load(SCREEN / "pool.npz")
    pool = {k: z[k] for k in z.files}
    classes = sorted(set(pool["labels"].tolist()))
    y = np.array([classes.index(lbl) for lbl in pool["labels"]])
    groups = pool["groups"]
    out = []
    for share in SHARES:
        rows, n_benign_groups = [], []
        for k in range(5):
            test = pool["parts"][k] == "test"
            dev_groups = {c: sorted(set(groups[~test & (y == c)])) for c in range(len(classes))}
            for draw in range(DRAWS if share < 1 else 1):
                rng = np.random.default_rng(100 * k + draw)
                keep = set()
                for gs in dev_groups.values():
                    n = max(2, round(share * len(gs)))
                    keep |= set(rng.choice(gs, size=min(n, len(gs)), replace=False))
                train = ~test & np.isin(groups, list(keep))
                n_benign_groups.append(len(set(groups[train & (y == classes.index("benign"))])))
                f = fit_head(x[train], y[train], groups[train], SCREEN_C)
                rows.append(fold_metrics(y[test], f(x[test]), groups[test], classes))
        row = {"share": share, "benign_groups": float(np.mean(n_benign_groups))}
        for key in ("balanced_accuracy", "benign_recall", "study_balanced_accuracy", "study_benign_recall"):
            v = np.array([r[key] for r in rows])
            row[key] = f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}"
        print(row, flush=True)
        out.append(row)
    with (SCREEN / "learning_curve.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(out[0]))
        w.writeheader()
        w.writerows(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
