"""A cv row re-scored with test-time augmentation (each slice averaged with its mirror), same fold models.

Usage: python benchmarks/model_quality/tta_rows.py runs/model_quality/NAME  -> NAME/cv_tta.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lungct.crossval.folds import summarise
from lungct.data.splits import load_split
from lungct.evaluation.study_level import study_metrics
from lungct.inference import Predictor
from lungct.run import RunDir

KEYS = ("accuracy", "balanced_accuracy", "macro_auc", "ece")


def main(cv_dir: str) -> None:
    from lungct.evaluation.metrics import compute_metrics

    cv = Path(cv_dir)
    rows = []
    for fold in sorted(cv.glob("fold_*")):
        items = [i for i in load_split(RunDir(fold).split) if i.part == "test"]
        predictor = Predictor(fold, tta=True, backend="torch")
        probs = predictor.predict_paths_array([i.path for i in items])
        y = np.array([predictor.classes.index(i.label) for i in items])
        m = compute_metrics(y, probs, predictor.classes, predictor.card.positive_class)
        row = {k: m[k] for k in KEYS}
        row.update({f"{c}.recall": m["classes"][c]["recall"] for c in predictor.classes})
        row.update(study_metrics(y, probs, [i.group for i in items], predictor.classes))
        rows.append(row)
    result = {"tta": "horizontal flip", "summary": summarise(rows), "per_fold": rows}
    (cv / "cv_tta.json").write_text(json.dumps(result, indent=2))
    s = result["summary"]
    print({k: f"{v['mean']:.3f} ± {v['std']:.3f}" for k, v in s.items() if v["mean"] is not None})


if __name__ == "__main__":
    main(sys.argv[1])
