"""Would one temperature per recipe calibrate unseen patients better than each run's own validation fit?

For each fold of a `lungct cv` folder, calibrators fitted only on the OTHER folds are applied to this fold's
(uncalibrated) test predictions, so nothing is fitted on the fold's own test part:
- the median of the other folds' validation temperatures;
- a temperature fitted on the other folds' pooled test predictions (their out-of-fold predictions: the
  recipe-level temperature a cv of the recipe yields, `lungct calibrate --from-cv`);
- per-class isotonic maps fitted on the same pooled predictions.
Usage: python benchmarks/model_quality/recipe_temperature.py runs/model_quality/NAME [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from oof import read_oof
from scipy.special import softmax

from lungct.evaluation.metrics import expected_calibration_error
from lungct.inference.calibration import fit_isotonic, fit_temperature


def tempered(p: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.log(np.clip(p, 1e-12, 1.0)) / temperature, axis=1)


def main(dirs: list[str]) -> None:
    for d in map(Path, dirs):
        per_fold = json.loads((d / "cv.json").read_text())["per_fold"]
        temps = np.array([r["temperature"] for r in per_fold])
        oof = read_oof(d)
        parts = [(oof.y[oof.fold == k], oof.p[oof.fold == k]) for k in range(1, len(temps) + 1)]
        raw, recipe, pooled_t, pooled_iso, fitted_t = [], [], [], [], []
        for k, (y, p) in enumerate(parts):
            y_rest = np.concatenate([q[0] for j, q in enumerate(parts) if j != k])
            p_rest = np.concatenate([q[1] for j, q in enumerate(parts) if j != k])
            scaler = fit_temperature(y_rest, p_rest)
            fitted_t.append(scaler.temperature)
            raw.append(expected_calibration_error(y, p))
            recipe.append(expected_calibration_error(y, tempered(p, float(np.median(np.delete(temps, k))))))
            pooled_t.append(expected_calibration_error(y, scaler.apply(p)))
            pooled_iso.append(expected_calibration_error(y, fit_isotonic(y_rest, p_rest).apply(p)))
        own = np.array([r["ece_calibrated"] for r in per_fold])

        def fmt(v) -> str:
            return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}"

        def better(v, raw=raw) -> str:
            return f"{fmt(v)} (lower in {int(np.sum(np.array(v) < np.array(raw)))} of {len(raw)})"

        print(
            f"{d.name}: T per fold {np.round(temps, 2).tolist()}; test ECE uncalibrated {fmt(raw)}, "
            f"own validation T {better(own)}, median T of the other folds {better(recipe)}, "
            f"T on the other folds' test predictions {better(pooled_t)} (T {np.round(fitted_t, 2).tolist()}), "
            f"isotonic on them {better(pooled_iso)}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
