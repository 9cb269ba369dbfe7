"""The default's learning curve over its five fold draws: is it the data or the method?

The default probe (lungct's own fit, as in feature_levers.py) is refitted on a share of each fold's training
groups (per class, at least two groups kept; 2 random subsets per share below 1), and scored on the fold's
unchanged test part, for all 25 folds of the default's five draws. A curve still rising at 100% says more patients
would help; a flat one says the representation is the limit.

Usage (after feature_levers.py has cached the features):
    cd benchmarks/model_quality && python learning_curve_default.py  -> benchmarks/results/learning_curve_default.json
"""

from __future__ import annotations

import json

import numpy as np
from feature_levers import extract, load_draws, probe
from oof import ROOT
from screen import fold_metrics

from lungct.training.probe import _proba

SHARES = (0.25, 0.5, 0.75, 1.0)
SUBSETS = 2
KEYS = (
    "accuracy",
    "balanced_accuracy",
    "benign_recall",
    "malignant_recall",
    "normal_recall",
    "study_balanced_accuracy",
)


def main() -> None:
    d = load_draws()
    x = extract(d.paths)["last"]
    benign = d.classes.index("benign")
    result = {}
    for share in SHARES:
        rows, n_benign = [], []
        for draw, folds in enumerate(d.parts):
            for k, part in enumerate(folds):
                train_groups = {c: sorted(set(d.groups[(part == "train") & (d.y == c)])) for c in range(len(d.classes))}
                test = part == "test"
                for subset in range(SUBSETS if share < 1 else 1):
                    rng = np.random.default_rng(1000 * draw + 10 * k + subset)
                    keep = set()
                    for gs in train_groups.values():
                        n = min(len(gs), max(2, round(share * len(gs))))
                        keep |= set(rng.choice(gs, size=n, replace=False).tolist())
                    train = (part == "train") & np.isin(d.groups, list(keep))
                    n_benign.append(len(set(d.groups[train & (d.y == benign)])))
                    fitted = probe(x[train], d.y[train], d.groups[train])
                    rows.append(fold_metrics(d.y[test], _proba(*fitted, x[test][:, :1]), d.groups[test], d.classes))
        summary = {"benign_groups_trained_on": round(float(np.mean(n_benign)), 1), "fits": len(rows)}
        for key in KEYS:
            v = np.array([r[key] for r in rows])
            summary[key] = [round(float(np.nanmean(v)), 3), round(float(np.nanstd(v, ddof=1)), 3)]
        result[str(share)] = summary
        print(share, summary, flush=True)
    out = ROOT / "benchmarks" / "results" / "learning_curve_default.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
