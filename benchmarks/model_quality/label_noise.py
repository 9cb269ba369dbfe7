"""Slice labels are case labels: does the default's probe gain when the training slices that look mislabelled go?

IQ-OTH/NCCD labels whole cases, so every slice of a benign case is "benign", also where no nodule is in the slice,
and such a slice looks normal. The probe is then taught that some normal-looking slices are benign, which may blur
the benign/normal boundary it draws for new patients. Confident learning (Northcutt et al., JAIR 2021; the
`cleanlab` library) finds the training examples whose given label their out-of-sample probabilities disbelieve.
Per outer fold, on the training part only:

1. out-of-sample probabilities of every training slice from lungct's probe fitted on the other inner group folds
   (StratifiedGroupKFold, so a patient's slices never score each other), with the C that the default's inner
   search chose for the training part;
2. `cleanlab.filter.find_label_issues` on them (its default, prune by noise rate);
3. the probe refitted at the same C without (or with down-weighted) flagged slices; each test slice scored once,
   with its case label as always, so the figures stay comparable with every other row.

Rows:
- `last`: the default (reproduces feature_levers.json's `last`);
- `drop:all`: every flagged training slice dropped;
- `drop:benign`: only flagged slices labelled benign dropped (the lesion-free slices of benign cases);
- `drop:case`: flagged slices labelled benign or malignant that the probe calls normal dropped (lesion-free slices
  of any case);
- `drop:neq`: every training slice whose out-of-sample argmax is not its label dropped (cleanlab's
  `predicted_neq_given`, the bluntest rule);
- `weight`: no slice dropped; each weighted by its out-of-sample label quality (cleanlab's self-confidence), a soft
  form of the same idea.

Scored as feature_levers.py over the default's five fold draws (`body_levers.pool_draws`, no runs/ folders needed),
paired per fold against the default's `last` row. Features: the default's pooled features of each slice and its
mirror, cached by body_levers.py (`runs/screen/body_levers.npz`; it extracts them when missing).

Usage: python benchmarks/model_quality/label_noise.py [ROW ...] -> benchmarks/results/label_noise.json
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np
from body_levers import extract, pool_draws
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from feature_levers import merge_results, paired, summarise_folds
from oof import ROOT
from screen import fold_metrics
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight

from lungct.training.probe import _fit, _proba, best_c, choose_c

ROWS = ["last", "drop:all", "drop:benign", "drop:case", "drop:neq", "weight"]
OOF_FOLDS = 5


def out_of_sample(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float) -> np.ndarray:
    """(n, k) probabilities of each training slice from probes fitted on the other inner group folds."""
    p = np.zeros((len(y), int(y.max()) + 1))
    for tr, va in StratifiedGroupKFold(OOF_FOLDS, shuffle=True, random_state=42).split(x[:, 0], y, groups):
        p[va] = _proba(*_fit(x[tr], y[tr], c, True), x[va])
    return p


def fit_weighted(x: np.ndarray, y: np.ndarray, c: float, weight: np.ndarray) -> tuple:
    """lungct's probe fit (`_fit`: standardised slice and mirror, balanced classes) with a weight per slice."""
    n, views, d = x.shape
    flat = x.reshape(n * views, d)
    scaler = StandardScaler().fit(flat)
    w = compute_sample_weight("balanced", y) * weight
    lr = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(flat), np.repeat(y, views), np.repeat(w, views))
    return scaler, lr


def flagged(row: str, y: np.ndarray, p: np.ndarray, classes: list[str]) -> np.ndarray:
    """Which training slices `row` drops, from their labels and out-of-sample probabilities."""
    if row == "drop:neq":
        return find_label_issues(y, p, filter_by="predicted_neq_given")
    issues = find_label_issues(y, p)
    benign, malignant, normal = (classes.index(c) for c in ("benign", "malignant", "normal"))
    if row == "drop:all":
        return issues
    if row == "drop:benign":
        return issues & (y == benign)
    if row == "drop:case":
        return issues & np.isin(y, [benign, malignant]) & (p.argmax(1) == normal)
    raise SystemExit(f"unknown row {row!r}; choose from {ROWS}")


def score(rows: list[str]) -> dict[str, dict]:
    d = pool_draws()
    x, y, groups, classes = extract(d.paths)["last"], d.y, d.groups, d.classes
    folds: dict[str, list[dict]] = {r: [] for r in rows}
    per_draw: dict[str, list[float]] = {r: [] for r in rows}
    dropped: dict[str, list[dict]] = {r: [] for r in rows}
    t0 = time.time()
    for n, draw in enumerate(d.parts):
        scored: dict[str, list[dict]] = {r: [] for r in rows}
        for part in draw:
            train, test = part == "train", part == "test"
            xt, yt, gt = x[train], y[train], groups[train]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                c = best_c(choose_c(xt, yt, list(gt), True, 42))
                p_oof = out_of_sample(xt, yt, gt, c) if rows != ["last"] else None
                for row in rows:
                    gone = flagged(row, yt, p_oof, classes) if row.startswith("drop:") else np.zeros(len(yt), bool)
                    if row == "weight":
                        fit = fit_weighted(xt, yt, c, get_label_quality_scores(yt, p_oof))
                    else:
                        fit = _fit(xt[~gone], yt[~gone], c, True)
                    scored[row].append(fold_metrics(y[test], _proba(*fit, x[test][:, :1]), groups[test], classes))
                    dropped[row].append({cl: int((gone & (yt == k)).sum()) for k, cl in enumerate(classes)})
        for row in rows:
            folds[row] += scored[row]
            per_draw[row].append(round(float(np.mean([r["balanced_accuracy"] for r in scored[row]])), 3))
        print(f"draw {n + 1}/{len(d.parts)}, {time.time() - t0:.0f} s:", {r: per_draw[r][-1] for r in rows}, flush=True)
    default = json.loads((ROOT / "benchmarks" / "results" / "feature_levers.json").read_text())["last"]
    base = np.array(default["balanced_accuracy_per_fold"])
    results = {}
    for row in rows:
        summary = summarise_folds(folds[row], per_draw[row])
        summary["paired_vs_default"] = paired(summary["balanced_accuracy_per_fold"], base)
        summary["dropped_per_fold_mean"] = {
            cl: round(float(np.mean([f[cl] for f in dropped[row]])), 1) for cl in classes
        }
        summary["seconds_all_rows"] = round(time.time() - t0)
        results[row] = summary
        print(row, {k: v for k, v in summary.items() if k != "balanced_accuracy_per_fold"}, flush=True)
    return results


if __name__ == "__main__":
    merge_results("label_noise.json", score(sys.argv[1:] or ROWS))
