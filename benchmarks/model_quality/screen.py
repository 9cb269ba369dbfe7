"""Screening on cached frozen features: one row per (field of view, resolution, pooling, head), same 5 group folds.

Each fold's head is fitted on the fold's train+val part (both horizontal flips as samples) with C chosen by
3-fold group CV inside that part, never by the fold's test part; test probabilities average both flips.
Usage: python benchmarks/model_quality/screen.py [filter-substring ...]  -> runs/screen/screen.csv
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

from lungct.evaluation.metrics import ece_of_bins, reliability_bins

SCREEN = Path(__file__).resolve().parents[2] / "runs" / "screen"
CS = (0.003, 0.01, 0.03, 0.1)
SCREEN_C = 0.01  # screening: the C inner group CV chose most often on full-224-avg; finalists get the inner search


def load(view: str, size: int, pool: str) -> np.ndarray:
    z = np.load(SCREEN / f"feat_{view}_{size}.npz")
    if view == "tiles":  # (n, 2, 9, d): pool over the tiles
        t = z["tiles"]
        if pool == "catavgmax":
            return np.concatenate([t.mean(2), t.max(2)], axis=-1)
        return t.max(2) if pool == "max" else t.mean(2)
    if pool == "catavgmax":
        return np.concatenate([z["avg"], z["max"]], axis=-1)
    return z[pool]  # (n, 2 flips, C)


def fit_head(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float | None, seed: int = 0):
    """x: (n, 2, d). Returns a predict_proba function over (m, 2, d), averaging flips."""
    n, v, d = x.shape
    if c is None:
        best = (-1.0, CS[0])
        for cand in CS:
            scores = []
            for tr, va in StratifiedGroupKFold(3, shuffle=True, random_state=seed).split(x[:, 0], y, groups):
                f = fit_head(x[tr], y[tr], groups[tr], cand)
                scores.append(balanced_accuracy_score(y[va], f(x[va]).argmax(1)))
            best = max(best, (float(np.mean(scores)), cand))
        c = best[1]
    scaler = StandardScaler().fit(x.reshape(n * v, d))
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    lr.fit(scaler.transform(x.reshape(n * v, d)), np.repeat(y, v))

    def proba(z: np.ndarray) -> np.ndarray:
        m = len(z)
        return lr.predict_proba(scaler.transform(z.reshape(m * v, d))).reshape(m, v, -1).mean(1)

    proba.c = c
    return proba


def fold_metrics(y: np.ndarray, p: np.ndarray, groups: np.ndarray, classes: list[str]) -> dict:
    pred = p.argmax(1)
    row = {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_auc": float(roc_auc_score(y, p, multi_class="ovr", average="macro")),
        "ece": float(ece_of_bins(reliability_bins(y, p))),
    }
    for k, c in enumerate(classes):
        row[f"{c}_recall"] = float((pred[y == k] == k).mean())
    # study level: mean probability of each group (the patient proxy)
    ug = np.unique(groups)
    gy = np.array([np.bincount(y[groups == g]).argmax() for g in ug])
    gp = np.stack([p[groups == g].mean(0) for g in ug]).argmax(1)
    row["study_accuracy"] = float((gp == gy).mean())
    row["study_balanced_accuracy"] = float(balanced_accuracy_score(gy, gp))
    for k, c in enumerate(classes):
        row[f"study_{c}_recall"] = float((gp[gy == k] == k).mean()) if (gy == k).any() else float("nan")
    return row


def run(name: str, x: np.ndarray, pool: dict, classes: list[str], search: bool = False) -> dict:
    y = np.array([classes.index(lbl) for lbl in pool["labels"]])
    groups = pool["groups"]
    rows, t0, cs = [], time.time(), []
    for k in range(5):
        test = pool["parts"][k] == "test"
        dev = ~test
        f = fit_head(x[dev], y[dev], groups[dev], None if search else SCREEN_C, seed=k)
        cs.append(f.c)
        rows.append(fold_metrics(y[test], f(x[test]), groups[test], classes))
    out = {"name": name, "seconds": round(time.time() - t0, 1), "C": "/".join(str(c) for c in cs)}
    for key in rows[0]:
        v = np.array([r[key] for r in rows])
        out[key] = f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}"
    print(out, flush=True)
    return out


def main(filters: list[str]) -> None:
    search = "--search" in filters
    filters = [f for f in filters if f != "--search"]
    z = np.load(SCREEN / "pool.npz", allow_pickle=False)
    pool = {k: z[k] for k in z.files}
    classes = sorted(set(pool["labels"].tolist()))
    results = []
    for f in sorted(SCREEN.glob("feat_*.npz")):
        _, view, size = f.stem.split("_")
        for p in ("avg", "max", "catavgmax") if view == "tiles" else ("avg", "max", "gem", "catavgmax"):
            name = f"{view}-{size}-{p}"
            if filters and not any(s in name for s in filters):
                continue
            results.append(run(name, load(view, int(size), p), pool, classes, search))
    target = SCREEN / ("screen.csv" if not filters else f"screen_{'_'.join(filters)}.csv")
    with target.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)


if __name__ == "__main__":
    main(sys.argv[1:])
