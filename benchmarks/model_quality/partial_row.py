"""Per-fold slice and study figures of the finished folds of a cv row whose cv.json is not written yet.

Usage: python benchmarks/model_quality/partial_row.py runs/model_quality/NAME
A long row (lpft_ema_tiles_512: hours per fold on 2 cores) spans sessions; this reads each finished fold's
eval/metrics.json and predictions.csv, and scores one result per group with lungct.evaluation.study_level, the
function `lungct cv` uses for its study columns (on a finished row it prints the same figures as cv.csv).
"""

import json
import sys
from pathlib import Path

from oof import oof_from_rows

from lungct.evaluation.oof import fold_predictions
from lungct.evaluation.study_level import study_metrics

row = Path(sys.argv[1])
for fold in sorted(row.glob("fold_*")):
    m_path = fold / "eval" / "metrics.json"
    if not m_path.is_file():
        continue
    m = json.loads(m_path.read_text())
    oof = oof_from_rows(fold_predictions(row, int(fold.name.removeprefix("fold_"))))
    s = study_metrics(oof.y, oof.p, oof.groups, oof.classes)
    summ = json.loads((fold / "summary.json").read_text())
    print(
        fold.name,
        f"acc {m['accuracy']:.3f} bal {m['balanced_accuracy']:.3f}",
        " ".join(f"{c} {m['classes'][c]['recall']:.3f}" for c in oof.classes),
        f"auc {m['macro_auc']:.3f} ece {m['ece']:.3f}",
        f"study acc {s['study.accuracy']:.3f} bal {s['study.balanced_accuracy']:.3f}",
        f"benign {s['study.benign.recall']:.3f}",
        f"train_s {summ.get('train_seconds')}",
    )
