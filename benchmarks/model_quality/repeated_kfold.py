"""Repeated group k-fold: recipes scored on several draws of the 5 group folds, paired draw by draw.

Usage: python benchmarks/model_quality/repeated_kfold.py RECIPE=ROW,ROW,... [RECIPE=ROW,...] [--output FILE]
e.g.   lpft_ema=lpft_ema_224,lpft_ema_folds1_224,lpft_ema_folds2_224
       default=default_224_rerun,default_folds1_224,default_folds2_224
(finished `lungct cv --folds 5` folders in runs/model_quality/; the i-th row of every recipe must be the same
fold draw, which is checked on each fold's test images). ROW@tta reads the same folds re-scored with test-time
augmentation (ROW/cv_tta.json, written by tta_rows.py). Writes benchmarks/results/repeated_kfold.json, or FILE.
Each recipe after the first is paired with the first draw by draw and fold by fold (the folds of a draw are the
same test patients for every recipe).

Every other row of docs/model-quality.md is one draw of the folds (experiment seed 42), so a row's ± is the spread
of 5 folds of one partition of the ~15 benign patients, and the rows' differences are paired on that partition
only. Other experiment seeds draw other folds (and validation parts); the training seed stays 42 in these
configs, so the spread between draws is which patients land together, not initialisation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from table import COLUMNS

from lungct.data.splits import load_split

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs" / "model_quality"
RESULTS = ROOT / "benchmarks" / "results" / "repeated_kfold.json"


def cv_file(row: str) -> Path:
    """ROW: the cv folder's own cv.json; ROW@tta: its TTA re-scoring (tta_rows.py)."""
    name, _, variant = row.partition("@")
    return RUNS / name / ("cv_tta.json" if variant == "tta" else "cv.json")


def fold_means(row: str) -> dict[str, float]:
    """A cv folder's 5-fold mean of every table column."""
    summary = json.loads(cv_file(row).read_text())["summary"]
    return {key: summary[key]["mean"] for key, _ in COLUMNS if summary.get(key)}


def test_parts(row: str) -> list[frozenset[str]]:
    """Each fold's test images: what makes two cv folders the same fold draw."""
    folds = sorted(cv_file(row).parent.glob("fold_*"))
    return [frozenset(i.path for i in load_split(fold / "split.csv") if i.part == "test") for fold in folds]


def fold_scores(row: str) -> list[float]:
    """A cv folder's balanced accuracy per fold, in fold order."""
    per_fold = json.loads(cv_file(row).read_text())["per_fold"]  # cv_tta.json lists its folds in fold order
    return [f["balanced_accuracy"] for f in sorted(per_fold, key=lambda f: f.get("fold", 0))]


def main(args: list[str]) -> None:
    output = RESULTS
    if "--output" in args:
        at = args.index("--output")
        if at + 1 >= len(args):
            raise SystemExit("--output needs a file name")
        output, args = Path(args[at + 1]), args[:at] + args[at + 2 :]
    recipes = {arg.split("=", 1)[0]: arg.split("=", 1)[1].split(",") for arg in args}
    draws = {len(rows) for rows in recipes.values()}
    if len(draws) != 1:
        raise SystemExit("every recipe needs the same number of fold draws")
    missing = [r for rows in recipes.values() for r in rows if not cv_file(r).is_file()]
    if missing:
        raise SystemExit(f"no finished cv in runs/model_quality/ for: {', '.join(missing)}")
    for i, rows in enumerate(zip(*recipes.values(), strict=True)):
        parts = [test_parts(r) for r in rows]
        if any(p != parts[0] for p in parts[1:]):
            raise SystemExit(f"draw {i + 1}: {', '.join(rows)} are not on the same folds")
    means = {row: fold_means(row) for rows in recipes.values() for row in rows}
    out: dict = {"recipes": {}, "paired": {}}
    head = ["recipe", "fold draw", *[title for _, title in COLUMNS]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, rows in recipes.items():
        per_draw = {row: means[row] for row in rows}
        keys = [k for k, _ in COLUMNS if all(k in m for m in per_draw.values())]
        agg = {
            k: (
                float(np.mean([m[k] for m in per_draw.values()])),
                float(np.std([m[k] for m in per_draw.values()], ddof=1)),
            )
            for k in keys
        }
        out["recipes"][name] = {"draws": per_draw, "mean_sd_over_draws": agg}
        for row, m in per_draw.items():
            print(f"| {name} | {row} | " + " | ".join(f"{m[k]:.3f}" if k in m else "n/a" for k, _ in COLUMNS) + " |")
        cells = [f"{agg[k][0]:.3f} ± {agg[k][1]:.3f}" if k in agg else "n/a" for k, _ in COLUMNS]
        print(f"| **{name}** | mean ± sd of the {len(rows)} draws | " + " | ".join(cells) + " |")
    names = list(recipes)
    for other in names[1:]:
        base = names[0]
        diffs = [
            means[a]["balanced_accuracy"] - means[b]["balanced_accuracy"]
            for a, b in zip(recipes[base], recipes[other], strict=True)
        ]
        folds = [
            a - b
            for ra, rb in zip(recipes[base], recipes[other], strict=True)
            for a, b in zip(fold_scores(ra), fold_scores(rb), strict=True)
        ]
        out["paired"][f"{base} - {other}"] = {"balanced_accuracy": diffs, "balanced_accuracy_per_fold": folds}
        print(
            f"\n{base} - {other}, balanced accuracy per draw: "
            + ", ".join(f"{d:+.3f}" for d in diffs)
            + f" (mean {np.mean(diffs):+.3f}); per fold: {base} higher in {sum(d > 0 for d in folds)} of {len(folds)},"
            + f" mean {np.mean(folds):+.3f} ± {np.std(folds, ddof=1):.3f}"
        )
    output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {output}")


if __name__ == "__main__":
    main(sys.argv[1:])
