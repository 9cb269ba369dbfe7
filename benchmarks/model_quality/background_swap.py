"""Does the default, as trained, change its answer when only the air around the body changes?

Session 23 found that the default's own features read the label from the air, table and border (`air:imagenet` in
ssl_rows.json: 0.588 with the body painted black). That shows the signal is there; this asks whether the default
uses it. Each test slice keeps its body and gets the background of a slice of another class: the composite is the
donor slice, with every pixel inside either slice's body hull (`lungct.data.field.body_hull`) taken from the test
slice, so the test slice's body is whole and no part of the donor's body shows. Donors are drawn at random (seed 0)
among the 512x512 slices of the other classes; 512x512 slices only, so the composite needs no resize.

The default's probe is fitted on each fold's original training part, exactly as in the rows of feature_levers.py,
and scores each test slice twice: as it is and in the composite. Reported per row: balanced accuracy of each, the
share of slices whose predicted class changes, and the share that moves to the donor's class. A model that reads
anatomy only would change nothing.

Usage: python benchmarks/model_quality/background_swap.py -> benchmarks/results/background_swap.json
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from body_levers import extract, pool_draws, square_512
from feature_levers import frozen_net, mirrored, probe
from oof import ROOT
from PIL import Image
from screen import fold_metrics

from lungct.data.field import body_hull
from lungct.training.probe import _proba

CACHE = ROOT / "runs" / "screen" / "background_swap.npz"


def composites(paths: list[str], y: np.ndarray, square: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2, 1280) default features of each 512x512 slice on another class's background, and each donor's index
    (-1 where the slice is not 512x512)."""
    donors = np.full(len(paths), -1)
    rng = np.random.default_rng(0)
    for i in np.flatnonzero(square):
        donors[i] = rng.choice(np.flatnonzero(square & (y != y[i])))
    if CACHE.exists():
        z = np.load(CACHE)
        if np.array_equal(z["donors"], donors):
            return z["swapped"], donors
    net, pre = frozen_net()
    hulls: dict[int, np.ndarray] = {}

    def hull(i: int) -> np.ndarray:
        if i not in hulls:
            hulls[i] = body_hull(pre.load(paths[i]))
        return hulls[i]

    out: dict[str, list] = {"swapped": []}
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with torch.inference_mode():
        for i, j in enumerate(donors):
            if j < 0:
                out["swapped"].append(np.zeros((2, 1280), dtype=np.float32))
                continue
            own, donor = np.asarray(pre.load(paths[i])), np.asarray(pre.load(paths[j])).copy()
            body = hull(i) | hull(j)
            donor[body] = own[body]
            x = torch.from_numpy(pre.to_array(Image.fromarray(donor)))[None]
            out["swapped"].append(mirrored(net, x))
            if i % 200 == 0:
                print(f"{i}/{len(paths)} slices, {time.time() - t0:.0f} s", flush=True)
    swapped = np.stack(out["swapped"])
    np.savez(CACHE, swapped=swapped, donors=donors)
    return swapped, donors


def main() -> None:
    d = pool_draws()
    paths, classes, y, groups = d.paths, d.classes, d.y, d.groups
    square = square_512(paths)
    last = extract(paths)["last"]
    swapped, donors = composites(paths, y, square)
    rows: dict[str, list] = {"original": [], "swapped": []}
    changed, to_donor = [], []
    for draw in d.parts:
        for part in draw:
            train, test = part == "train", (part == "test") & square
            fit = probe(last[train], y[train], groups[train])
            p0 = _proba(*fit, last[test][:, :1])
            p1 = _proba(*fit, swapped[test][:, :1])
            rows["original"].append(fold_metrics(y[test], p0, groups[test], classes))
            rows["swapped"].append(fold_metrics(y[test], p1, groups[test], classes))
            changed.append(float((p0.argmax(1) != p1.argmax(1)).mean()))
            to_donor.append(float((p1.argmax(1) == y[donors[test]]).mean() - (p0.argmax(1) == y[donors[test]]).mean()))
    metrics = ["balanced_accuracy", "benign_recall", "malignant_recall", "normal_recall", "macro_auc"]
    result = {
        name: {m: round(float(np.mean([r[m] for r in folds])), 3) for m in metrics} for name, folds in rows.items()
    }
    diff = np.array([s["balanced_accuracy"] - o["balanced_accuracy"] for o, s in zip(*rows.values(), strict=True)])
    below = int((diff < 0).sum())
    result["paired_balanced_accuracy_change"] = f"{diff.mean():+.3f} ± {diff.std(ddof=1):.3f} ({below}/25 folds below)"
    result["share_of_slices_whose_class_changes"] = round(float(np.mean(changed)), 3)
    result["change_in_share_called_the_donors_class"] = round(float(np.mean(to_donor)), 3)
    result["slices"] = int(square.sum())
    print(json.dumps(result, indent=2))
    (ROOT / "benchmarks" / "results" / "background_swap.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
