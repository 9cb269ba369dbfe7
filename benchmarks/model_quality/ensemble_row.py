"""The ensemble row: nested cross-validation, so the fold ensembles are scored on the same 5 outer group folds.

Usage: python benchmarks/model_quality/ensemble_row.py [NAME]   (NAME: a config in configs/model_quality/,
default lpft_ema_224, the LP-FT + EMA recipe). Writes runs/model_quality/ensemble_NAME/, which
`table.py` reads like any cv folder.

An ensemble of `lungct cv`'s own folds has no honest test part (every image trained some member). So for each
outer fold k of the study (the same folds as every other row), `lungct cv --within` runs 5 inner folds over
fold k's development images only, `lungct ensemble` averages those 5 inner models, and the ensemble is scored
on fold k's test part, which none of its members saw. 25 trainings; every finished inner fold, ensemble and
evaluation is reused when the script runs again, so an interrupted row resumes.

Calibration: the ensemble's test ECE is reported raw and after a temperature fitted on the inner folds'
out-of-fold predictions (`lungct calibrate --from-cv`, cross-fitted: never on the outer test part).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from lungct.config import load_config
from lungct.crossval.folds import (
    BOOKKEEPING,
    _fold_columns,
    cross_validate,
    cv_markdown,
    fold_splits,
    pool_from_config,
    summarise,
)
from lungct.data.splits import save_split
from lungct.ensemble.build import build_ensemble
from lungct.evaluation.calibrate import cross_fitted, fit_temperature, raw_part
from lungct.evaluation.evaluate import evaluate
from lungct.evaluation.metrics import calibration_metrics
from lungct.evaluation.study_level import study_metrics
from lungct.inference import Predictor
from lungct.run import RunDir, write_json

ROOT = Path(__file__).resolve().parents[2]
FOLDS = 5


def outer_fold(cfg, items, out: Path, k: int) -> dict:
    """Inner cv over outer fold k's development images, their ensemble, and its figures on fold k's test part."""
    base = out / f"outer_{k}"  # holds only the outer split: the `--within` run of the inner cv
    base.mkdir(parents=True, exist_ok=True)
    save_split(items, RunDir(base).split)
    inner = base / "inner"
    t0 = time.time()
    inner_result = cross_validate(cfg, FOLDS, inner, progress=False, within=base)
    ens = out / f"fold_{k}"
    if not (ens / "eval" / "metrics.json").is_file():
        build_ensemble(inner, ens, overwrite=True)
        evaluate(ens, ens / "eval", None, progress=False)
    metrics = json.loads((ens / "eval" / "metrics.json").read_text())
    predictor = Predictor(ens)
    y, raw, groups = raw_part(predictor, "test", progress=False)
    y_oof, p_oof = cross_fitted(predictor, inner)
    scaler = fit_temperature(y_oof, p_oof)
    return {
        "fold": k,
        "n_test": metrics["n"],
        **_fold_columns(metrics),
        **study_metrics(y, raw, groups, predictor.classes),
        "temperature": scaler.temperature,
        "ece_calibrated": calibration_metrics(y, scaler.apply(raw))["ece"],
        "inner_balanced_accuracy": inner_result["summary"]["balanced_accuracy"]["mean"],
        "seconds": round(time.time() - t0, 1),
        "train_seconds": sum(r.get("train_seconds") or 0 for r in inner_result["per_fold"]),
        "reused": all(r["reused"] for r in inner_result["per_fold"]),
    }


def main(name: str = "lpft_ema_224") -> None:
    cfg = load_config(ROOT / "configs" / "model_quality" / f"{name}.yaml")
    out = ROOT / "runs" / "model_quality" / f"ensemble_{name}"
    started = time.time()
    pool = pool_from_config(cfg, progress=False)
    rows = [outer_fold(cfg, items, out, k) for k, items in enumerate(fold_splits(pool, FOLDS, cfg), start=1)]
    result = {
        "folds": FOLDS,
        "split_mode": cfg.split.mode,
        "within_run": None,
        "n_images": len(pool.paths),
        "n_groups": len(set(pool.groups)),
        "per_fold": rows,
        "summary": summarise([{k: v for k, v in r.items() if k not in BOOKKEEPING} for r in rows]),
        "method": "nested: each outer fold's model is the ensemble of 5 inner-fold models over its development images",
        "seconds": round(time.time() - started, 1),
    }
    write_json(out / "cv.json", result)
    (out / "cv.md").write_text(cv_markdown(result))
    s = result["summary"]
    bal = s["balanced_accuracy"]
    print(
        f"ensemble_{name}: balanced accuracy {bal['mean']:.3f} ± {bal['std']:.3f}, "
        f"ECE {s['ece']['mean']:.3f} -> {s['ece_calibrated']['mean']:.3f} (cross-fitted T); "
        f"inner folds' balanced accuracy {np.mean([r['inner_balanced_accuracy'] for r in rows]):.3f}"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(*sys.argv[1:])
