"""Fine-tuned fold models blended with frozen-feature probes: do two kinds of model err on different slices?

For each fine-tuned cv row named, per fold, its test probabilities (`oof_predictions.csv`) are averaged with equal
weights with those of the linear probe (`screen.py`'s head, C 0.01) on frozen full-224-avg and full-448-avg
features, fitted on the same fold's development part (every slice outside the row's test part of that fold, so
rows on other fold draws, such as lpft_ema_folds1_224, get probes of their own folds). Nothing is fitted on a test
part. The three blends and their equal weights were chosen on the default's folds (seed 42) after seeing them;
the other fold draws test that choice. The probes need `extract.py 224,448 full` first.
Usage: python benchmarks/model_quality/probe_blend.py lpft_ema_224 lpft_ema_seed1_224 lpft_ema_seed2_224
-> benchmarks/results/probe_blend.json and table rows on stdout.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
from oof import ROOT, print_summary, read_oof, row_dir
from screen import SCREEN, SCREEN_C, fit_head, fold_metrics, load

COLS = ["accuracy", "balanced_accuracy", "benign_recall", "malignant_recall", "normal_recall", "macro_auc", "ece"]
COLS += ["study_balanced_accuracy"]


def probe_probabilities(x: np.ndarray, y: np.ndarray, groups: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each slice's probabilities from the probe of the fold whose test part holds it."""
    p = np.zeros((len(y), 3))
    for k in np.unique(fold):
        test = fold == k
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p[test] = fit_head(x[~test], y[~test], groups[~test], SCREEN_C)(x[test])
    return p


def summarise(y: np.ndarray, p: np.ndarray, groups: np.ndarray, fold: np.ndarray, classes: list[str]) -> dict:
    folds = []
    for k in np.unique(fold):
        test = fold == k
        folds.append(fold_metrics(y[test], p[test], groups[test], classes))
    values = {c: np.array([f[c] for f in folds]) for c in COLS}
    return {c: [float(np.nanmean(v)), float(np.nanstd(v, ddof=1))] for c, v in values.items()}


def main(names: list[str]) -> None:
    if not names:
        raise SystemExit(__doc__)
    z = np.load(SCREEN / "pool.npz", allow_pickle=False)
    pool = {k: z[k] for k in z.files}
    classes = sorted(set(pool["labels"].tolist()))
    y = np.array([classes.index(label) for label in pool["labels"]])
    groups = pool["groups"]
    features = {size: load("full", size, "avg") for size in (224, 448)}
    by_path = {path: i for i, path in enumerate(pool["paths"])}
    summary: dict[str, dict] = {}
    for name in names:
        oof = read_oof(row_dir(name))
        at = np.array([by_path[path] for path in oof.paths])
        if oof.classes != classes or len(at) != len(y) or not np.array_equal(oof.y, y[at]):
            raise SystemExit(f"{name}: not the screen's pool of slices and labels")
        if not np.array_equal(oof.groups, groups[at]):
            raise SystemExit(f"{name}: not the screen's look-alike groups")
        ft, fold = np.empty_like(oof.p), np.empty(len(y), dtype=int)
        ft[at], fold[at] = oof.p, oof.fold
        probes = {size: probe_probabilities(x, y, groups, fold) for size, x in features.items()}
        rows = {
            f"{name}: probe 224": probes[224],
            f"{name}: probe 448": probes[448],
            f"{name} alone": ft,
            f"{name} + probe 224": (ft + probes[224]) / 2,
            f"{name} + probe 448": (ft + probes[448]) / 2,
            f"{name} + probes 224 and 448": (ft + probes[224] + probes[448]) / 3,
        }
        summary.update({key: summarise(y, p, groups, fold, classes) for key, p in rows.items()})
    out = ROOT / "benchmarks" / "results" / "probe_blend.json"
    out.write_text(json.dumps({"rows": names, "summary": summary}, indent=2) + "\n")
    print_summary(summary, COLS)
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
