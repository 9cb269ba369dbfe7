"""Does ImageNet's centre crop cost the frozen features? A probe on lungct's own preprocessing, crop against none.

`extract.py` squashes each whole slice to the input size (bilinear), while a run resizes the short side to
input_size / crop_pct and keeps the centre square (MobileNetV2: bicubic, crop_pct 0.875, so 6% of each side is
cut off). This script takes frozen MobileNetV2 features through `lungct.data.preprocess.Preprocess` itself at
crop_pct 0.875 (what runs use by default), 1.0 bicubic and 1.0 bilinear, each slice with its mirror, and fits
`screen.py`'s probe (C 0.01, mirror-averaged) on each fold of three fold draws: the cv rows named (default: the
default recipe's three draws), whose `fold_k/split.csv` give the parts. The probe is fitted on the training part
(as a run's probe is) and on training + validation.
Usage: python benchmarks/model_quality/crop_screen.py [ROW ...] -> benchmarks/results/crop_screen.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings

import numpy as np
import torch
from oof import ROOT, row_dir
from screen import SCREEN, fit_head, fold_metrics

from lungct.data.splits import load_split
from lungct.models.classifier import create_backbone

WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenetv2_100.imagenet.safetensors"
VARIANTS = {
    "crop_pct 0.875, bicubic (the backbone's own)": {},
    "crop_pct 1.0, bicubic": {"crop_pct": 1.0},
    "crop_pct 1.0, bilinear": {"crop_pct": 1.0, "interpolation": "bilinear"},
}
ROWS = ["lpft_ema_224", "lpft_ema_folds1_224", "lpft_ema_folds2_224"]
METRICS = ["accuracy", "balanced_accuracy", "benign_recall", "malignant_recall", "normal_recall", "macro_auc", "ece"]


@torch.inference_mode()
def features(paths: np.ndarray) -> dict[str, np.ndarray]:
    """(n, 2, 1280) pooled features of each slice and its mirror, per preprocessing variant."""
    torch.set_num_threads(2)
    backbone = create_backbone("mobilenetv2_100", str(WEIGHTS))
    net = backbone.module.eval()
    out = {}
    for name, change in VARIANTS.items():
        pre, t0, rows = dataclasses.replace(backbone.preprocess, **change), time.time(), []
        for path in paths:
            x = torch.from_numpy(pre.to_array(pre.load(path)))[None]
            rows.append(net(torch.cat([x, x.flip(-1)])).numpy())
        out[name] = np.stack(rows)
        print(f"{name}: features in {time.time() - t0:.0f} s", flush=True)
    return out


def main(rows: list[str]) -> None:
    z = np.load(SCREEN / "pool.npz", allow_pickle=False)
    paths, groups = z["paths"], z["groups"]
    classes = sorted(set(z["labels"].tolist()))
    y = np.array([classes.index(label) for label in z["labels"]])
    at = {path: i for i, path in enumerate(paths)}
    feats = features(paths)
    results: dict[str, dict] = {}
    for row in rows:
        parts = []
        for k in range(1, 6):
            part = np.empty(len(y), dtype=object)
            for item in load_split(row_dir(row) / f"fold_{k}" / "split.csv"):
                part[at[str(item.path)]] = item.part
            parts.append(part)
        for name, x in feats.items():
            for fit_on in ("train", "train + val"):
                folds = []
                for k, part in enumerate(parts):
                    test = part == "test"
                    fit = part == "train" if fit_on == "train" else ~test
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        head = fit_head(x[fit], y[fit], groups[fit], 0.01, seed=k)
                    folds.append(fold_metrics(y[test], head(x[test]), groups[test], classes))
                summary = {m: round(float(np.mean([f[m] for f in folds])), 3) for m in METRICS}
                results[f"{row} | {name} | fitted on {fit_on}"] = summary
                print(row, "|", name, "|", fit_on, "|", summary, flush=True)
    out = ROOT / "benchmarks" / "results" / "crop_screen.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:] or ROWS)
