"""Would one temperature per recipe calibrate unseen patients better than each run's own validation fit?

For each fold of a `lungct cv` folder: the median of the OTHER folds' validation temperatures is applied to
this fold's (uncalibrated) test predictions, so no fold's temperature is fitted on its own test part.
Usage: python benchmarks/model_quality/recipe_temperature.py runs/model_quality/NAME [...]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import softmax

from lungct.evaluation.metrics import expected_calibration_error


def fold_ece(fold: Path, temperature: float) -> tuple[float, float]:
    with (fold / "eval" / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = [c[2:] for c in rows[0] if c.startswith("p_")]
    y = np.array([classes.index(r["label"]) for r in rows])
    p = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    q = softmax(np.log(np.clip(p, 1e-12, 1.0)) / temperature, axis=1)
    return expected_calibration_error(y, p), expected_calibration_error(y, q)


def main(dirs: list[str]) -> None:
    for d in map(Path, dirs):
        per_fold = json.loads((d / "cv.json").read_text())["per_fold"]
        temps = np.array([r["temperature"] for r in per_fold])
        raw, recipe = zip(
            *(fold_ece(d / f"fold_{k}", float(np.median(np.delete(temps, k - 1)))) for k in range(1, len(temps) + 1)),
            strict=True,
        )
        own = np.array([r["ece_calibrated"] for r in per_fold])

        def fmt(v) -> str:
            return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}"

        print(
            f"{d.name}: T per fold {np.round(temps, 2).tolist()}; test ECE uncalibrated {fmt(raw)}, "
            f"own validation T {fmt(own)}, median T of the other folds {fmt(recipe)}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
