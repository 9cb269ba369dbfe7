"""A seed ensemble on the study's 5 folds: members trained on all of each fold's development images.

Usage: python benchmarks/model_quality/seed_ensemble.py [--recipes] NAME NAME [...]   (finished cv rows in
runs/model_quality/ that differ only in `train.seed`, e.g. lpft_ema_224 lpft_ema_seed1_224 lpft_ema_seed2_224)
-> runs/model_quality/seeds_<first NAME>_x<count>.json and a table row on stdout. With --recipes the members may
differ in anything but their folds (e.g. one recipe at several input sizes: lpft_ema_224 lpft_ema_448
lpft_ema_512), written to recipes_<first NAME>_x<count>.json.

The nested fold ensemble (ensemble_row.py) lost to one model because each member saw 4/5 of the development
images. Seed members see all of them: the same folds, the same training/validation parts (the experiment's
seed draws both), another initialisation, data order and augmentation. Per fold, the members' test
probabilities (their `oof_predictions.csv`) are averaged slice by slice, which is what `lungct ensemble` of
those fold runs would output. Each row is scored again with every slice given its study's mean probability
(oof.study_mean), which tells whether that scoring's gain holds over seeds. Nothing is fitted on a test part;
the rows were chosen before any was scored.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from oof import ROOT, print_summary, read_oof, row_dir, study_mean
from screen import fold_metrics

from lungct.config import load_config

STUDY_MEAN = ", each slice given its study's mean"


def same_recipe(names: list[str]) -> None:
    """Members must differ in train.seed only; anything else would make this another lever."""
    dumps = []
    for n in names:
        d = load_config(ROOT / "configs" / "model_quality" / f"{n}.yaml").model_dump()
        d.pop("name")
        d["train"].pop("seed")
        dumps.append(d)
    if any(d != dumps[0] for d in dumps[1:]):
        raise SystemExit(f"{names}: the configs differ in more than train.seed")


def main(args: list[str]) -> None:
    recipes = "--recipes" in args
    names = [a for a in args if a != "--recipes"]
    if len(set(names)) < 2 or len(set(names)) != len(names):
        raise SystemExit("give at least two different cv rows")
    if not recipes:
        same_recipe(names)
    members = [read_oof(row_dir(n)) for n in names]
    first = members[0]
    for m in members[1:]:
        if not all(np.array_equal(getattr(m, a), getattr(first, a)) for a in ("paths", "fold", "groups", "y")):
            raise SystemExit("the rows do not hold the same folds, groups and labels")
    keys = ["mean of members", *names]
    rows: dict[str, list[dict]] = {key + suffix: [] for suffix in ("", STUDY_MEAN) for key in keys}
    for k in sorted(set(first.fold)):
        i = first.fold == k
        y, groups = first.y[i], first.groups[i]
        probs = [m.p[i] for m in members]
        for key, p in zip(keys, [np.mean(probs, 0), *probs], strict=True):
            rows[key].append(fold_metrics(y, p, groups, first.classes))
            rows[key + STUDY_MEAN].append(fold_metrics(y, study_mean(p, groups), groups, first.classes))
    summary = {
        key: {m: [float(np.nanmean([r[m] for r in rs])), float(np.nanstd([r[m] for r in rs], ddof=1))] for m in rs[0]}
        for key, rs in rows.items()
    }
    out = ROOT / "runs" / "model_quality" / f"{'recipes' if recipes else 'seeds'}_{names[0]}_x{len(names)}.json"
    out.write_text(json.dumps({"members": names, "per_fold": rows, "summary": summary}, indent=2) + "\n")
    cols = ["accuracy", "balanced_accuracy", "benign_recall", "malignant_recall", "normal_recall", "macro_auc", "ece"]
    cols += ["study_accuracy", "study_balanced_accuracy", "study_benign_recall"]
    print_summary(summary, cols)
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
