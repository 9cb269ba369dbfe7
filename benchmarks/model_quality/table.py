"""The model-quality table from `lungct cv` folders: one row per lever, mean ± sd over the same 5 group folds.

Usage: python benchmarks/model_quality/table.py runs/model_quality/NAME [...] > rows.md
Writes benchmarks/results/model_quality.json too (every figure of every row). Inference ms/slice is the
median of 3 timed passes of fold 1's model over 64 test slices (PyTorch, batch 32, 2 threads).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lungct.data.splits import load_split
from lungct.inference import Predictor
from lungct.run import RunDir

COLUMNS = [
    ("accuracy", "acc"),
    ("balanced_accuracy", "bal. acc"),
    ("benign.recall", "benign rec."),
    ("malignant.recall", "malignant rec."),
    ("normal.recall", "normal rec."),
    ("macro_auc", "macro AUC"),
    ("ece", "ECE"),
    ("study.accuracy", "study acc"),
    ("study.balanced_accuracy", "study bal. acc"),
    ("study.benign.recall", "study benign rec."),
]
RESULTS = Path(__file__).resolve().parents[1] / "results" / "model_quality.json"


def ms_per_slice(fold: Path) -> float:
    torch.set_num_threads(2)
    paths = [i.path for i in load_split(RunDir(fold).split) if i.part == "test"][:64]
    predictor = Predictor(fold, backend="torch")
    predictor.predict_paths_array(paths[:8])  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        predictor.predict_paths_array(paths)
        times.append((time.perf_counter() - t0) / len(paths) * 1000)
    return float(np.median(times))


def row(cv_dir: Path) -> dict:
    info = json.loads((cv_dir / "cv.json").read_text())
    s = info["summary"]
    train_s = [r.get("train_seconds") or 0 for r in info["per_fold"]]
    return {
        "name": cv_dir.name,
        **{key: s.get(key) for key, _ in COLUMNS},
        "train_seconds_per_fold": float(np.mean(train_s)),
        "ms_per_slice": ms_per_slice(cv_dir / "fold_1"),
        "folds": info["folds"],
        "n_images": info["n_images"],
    }


def fmt(v: dict | None) -> str:
    return "n/a" if not v or v.get("mean") is None else f"{v['mean']:.3f} ± {v['std']:.3f}"


def main(dirs: list[str]) -> None:
    rows = [row(Path(d)) for d in dirs]
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    old.update({r["name"]: r for r in rows})
    RESULTS.write_text(json.dumps(old, indent=2))
    head = ["row", *[title for _, title in COLUMNS], "train s/fold", "ms/slice"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["name"], *[fmt(r[key]) for key, _ in COLUMNS]]
        cells += [f"{r['train_seconds_per_fold']:.0f}", f"{r['ms_per_slice']:.1f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
