"""Which benign cases does each recipe find? Benign recall per look-alike group (the patient proxy), per row.

Usage: python benchmarks/model_quality/benign_groups.py runs/model_quality/NAME [...]
-> benchmarks/results/benign_groups.json, and a table on stdout (groups from never to always found).

Every group is in the test part of exactly one of the 5 folds, so each row scores every benign group once.
A group that no recipe finds points at the data (a benign case whose slices look normal); a group that some
recipes find and others miss points at the method. For each group no row finds, it also lists the pool's
slices that share its look (the standard deviation of body pixels, > 20 of 255, at 128 px: grainy soft-tissue
reconstructions score far lower than the usual lung-window slices), by class.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from oof import read_oof
from PIL import Image

RESULTS = Path(__file__).resolve().parents[1] / "results" / "benign_groups.json"
CLASS = "benign"


def group_recall(cv_dir: Path) -> dict[str, tuple[int, int]]:
    """group -> (slices predicted benign, benign slices) over the test parts of the cv folder's folds."""
    o = read_oof(cv_dir)
    k = o.classes.index(CLASS)
    benign = o.y == k
    return {
        g: (int((o.predicted[benign & (o.groups == g)] == k).sum()), int((benign & (o.groups == g)).sum()))
        for g in np.unique(o.groups[benign])
    }


def body_std(path: str) -> float:
    a = np.asarray(Image.open(path).convert("L").resize((128, 128)), dtype=np.float32)
    body = a[a > 20]
    return float(body.std()) if body.size else 0.0


def same_look(cv_dir: Path, group: str) -> dict:
    """Pool slices, per class, whose body-pixel spread lies within `group`'s range +-10%, and at most 1.25x its
    largest value (the same look or further from the usual one, for groups at the low end)."""
    with (next(cv_dir.glob("fold_*")) / "split.csv").open(newline="") as fh:
        pool = list(csv.DictReader(fh))
    spread = {row["path"]: body_std(row["path"]) for row in pool}
    mine = [spread[row["path"]] for row in pool if row["group"] == group]

    def count(lo: float, hi: float) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for row in pool:
            if lo <= spread[row["path"]] <= hi:
                counts[row["label"]] += 1
        return dict(counts)

    return {
        "group_spread": [round(min(mine), 1), round(max(mine), 1)],
        "pool_median_spread": round(float(np.median(list(spread.values()))), 1),
        "within_10pct": count(0.9 * min(mine), 1.1 * max(mine)),
        "at_most_125pct_of_max": count(0.0, 1.25 * max(mine)),
    }


def main(dirs: list[str]) -> None:
    rows = {Path(d).name: group_recall(Path(d)) for d in dirs}
    groups = sorted({g for r in rows.values() for g in r})
    mean = {g: sum(r[g][0] / r[g][1] for r in rows.values() if g in r) / len(rows) for g in groups}
    print("| group | benign slices | " + " | ".join(rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for g in sorted(groups, key=lambda g: mean[g]):
        n = next(r[g][1] for r in rows.values() if g in r)
        cells = [f"{r[g][0] / r[g][1]:.2f}" if g in r else "" for r in rows.values()]
        print(f"| {g} | {n} | " + " | ".join(cells) + " |")
    never = [g for g in groups if all(r.get(g, (0, 1))[0] == 0 for r in rows.values())]
    slices = sum(next(r[g][1] for r in rows.values() if g in r) for g in never)
    print(f"\nfound by no row: {len(never)} of {len(groups)} groups ({slices} slices): {', '.join(never)}")
    looks = {g: same_look(Path(dirs[0]), g) for g in never}
    for g, counts in looks.items():
        print(f"slices that look like {g}: {counts}")
    RESULTS.write_text(
        json.dumps(
            {"rows": {k: {g: list(v) for g, v in r.items()} for k, r in rows.items()}, "never_found": looks}, indent=2
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
