"""Attention MIL over a study's slices on *fine-tuned* features: each fold's own model of a cv row.

Usage: python benchmarks/model_quality/mil_finetuned.py NAME   (NAME: a finished row in runs/model_quality/)
-> runs/screen/mil_ft_NAME.csv and a line per fold on stdout.

`mil_screen.py` pooled frozen ImageNet features. Here fold k's features come from fold k's fine-tuned model
(`runs/model_quality/NAME/fold_k`, pooled backbone output through the run's own preprocessing, each slice and
its mirror image), so nothing of fold k's test part reaches its features, its MIL model or its standardisation.
The MIL model, its fixed settings and the 5 seeds are mil_screen's; it is trained on the bags of the fold's
development groups (the fold model's training and validation parts).

Printed beside it, from the same forward passes: the fold model itself, slice by slice, and with each slice
given its study's mean probability (what the study-level columns of the table score), so MIL is measured
against plain mean aggregation of the same model.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from mil_screen import SEEDS, bag_probabilities, bags, per_slice, train
from oof import study_mean
from screen import SCREEN, fold_metrics

from lungct.data.splits import load_split
from lungct.inference import Predictor

ROOT = Path(__file__).resolve().parents[2]


def fold_features(run: Path, paths: list[str], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 2 views, d), probabilities (n, classes)) of every pool slice under the fold's model."""
    if cache.is_file():
        z = np.load(cache)
        return z["features"], z["probs"]
    predictor = Predictor(run, backend="torch", batch_size=32)
    pre = predictor.card.preprocess
    feats, probs = [], []
    for i in range(0, len(paths), 32):
        x = np.stack([pre.to_array(pre.load(p)) for p in paths[i : i + 32]])
        p0, f0 = predictor.probabilities_and_features(x, calibrated=False)
        _, f1 = predictor.probabilities_and_features(np.ascontiguousarray(x[..., ::-1]), calibrated=False)
        feats.append(np.stack([f0, f1], 1))
        probs.append(p0)
    out = np.concatenate(feats).astype(np.float32), np.concatenate(probs)
    np.savez(cache, features=out[0], probs=out[1])
    return out


def check_same_folds(run: Path, paths: np.ndarray, test: np.ndarray) -> None:
    """The screen's pool.npz and the cv row must hold the same test part, or the comparison is void."""
    ours = {Path(paths[i]).resolve() for i in test}
    theirs = {Path(it.path).resolve() for it in load_split(run / "split.csv") if it.part == "test"}
    if ours != theirs:
        raise SystemExit(f"{run}: its test part is not the screen's fold (run extract.py for this config)")


def main(name: str) -> None:
    torch.set_num_threads(2)
    z = np.load(SCREEN / "pool.npz", allow_pickle=False)
    classes = sorted(set(z["labels"].tolist()))
    y = np.array([classes.index(lbl) for lbl in z["labels"]])
    groups, paths = z["groups"], z["paths"]
    out_rows: dict[str, list[dict]] = {"mil": [], "slice": [], "study_mean": []}
    t0 = time.time()
    for k in range(5):
        run = ROOT / "runs" / "model_quality" / name / f"fold_{k + 1}"
        test = np.flatnonzero(z["parts"][k] == "test")
        dev = np.flatnonzero(z["parts"][k] != "test")
        check_same_folds(run, paths, test)
        x, p = fold_features(run, [str(s) for s in paths], SCREEN / f"ft_{name}_fold{k + 1}.npz")
        flat = x[dev].reshape(-1, x.shape[-1])
        xs = ((x - flat.mean(0)) / (flat.std(0) + 1e-6)).astype(np.float32)
        models = [train(xs, y, bags(groups, dev), len(classes), seed) for seed in range(SEEDS)]
        test_bags = bags(groups, test)
        order = np.concatenate(test_bags)

        for key, probs in (
            ("mil", per_slice(bag_probabilities(models, xs, test_bags), test_bags)),
            ("slice", p[order]),
            ("study_mean", study_mean(p[order], groups[order])),
        ):
            out_rows[key].append(fold_metrics(y[order], probs, groups[order], classes))
        print(
            f"fold {k + 1}: "
            + " | ".join(
                f"{key} bal {r[-1]['balanced_accuracy']:.3f} benign {r[-1]['benign_recall']:.3f} "
                f"mal {r[-1]['malignant_recall']:.3f}"
                for key, r in out_rows.items()
            ),
            flush=True,
        )
    with (SCREEN / f"mil_ft_{name}.csv").open("w", newline="") as fh:
        writer = None
        for key, rows in out_rows.items():
            row = {"name": f"{key}-{name}", "seconds": round(time.time() - t0, 1)}
            for m in rows[0]:
                v = np.array([r[m] for r in rows])
                row[m] = f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}"
            print(row, flush=True)
            if writer is None:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)


if __name__ == "__main__":
    main(*sys.argv[1:])
