"""Score `gpu_finetune.py`'s fine-tuned folds with the study's own metrics, beside the default probe on the same folds.

Input: the results file the GPU run wrote (kept gzipped in benchmarks/results/, so this runs without a GPU). Each
job's test indices are checked against the fold parts `gpu_pack.py` draws here, so a job scored against other
slices than the default's fold stops the script. Per row (input size, scored once or averaged with the mirror):
the slice and study figures of `screen.fold_metrics` averaged over the folds it has, ECE after a temperature fitted
on the fold's validation part (the default path's calibration), the per-draw balanced accuracy, and the paired
per-fold difference from the default's `last` row of feature_levers.json (the same 25 folds, in the same order).

Usage: python benchmarks/model_quality/gpu_rows.py [RESULTS ...] -> benchmarks/results/gpu_finetune.json
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
from gpu_pack import pool_and_parts
from oof import ROOT
from screen import fold_metrics

from lungct.evaluation.metrics import expected_calibration_error
from lungct.inference.calibration import fit_temperature

RESULTS = ROOT / "benchmarks" / "results"
RAW = [RESULTS / "gpu_finetune_raw.json.gz", RESULTS / "gpu_finetune_gentle_raw.json.gz"]
# what a job returned -> the row's suffix: the EMA model once per slice, averaged with its mirror, and (recipe
# gentle) the probe head the fine-tuning started from, before any fine-tuning, and that head's probabilities
# averaged with the fine-tuned model's
OUTPUTS = {"p_test_probe": ":probe start", "p_test": "", "p_test_tta": "+tta", "p_test_blend": ":blend"}
BLEND = ("p_test_probe", "p_test")  # the blend row: the start's and the fine-tuned model's probabilities averaged
METRICS = ["accuracy", "balanced_accuracy", "benign_recall", "malignant_recall", "normal_recall", "macro_auc", "ece"]
STUDY = ["study_balanced_accuracy", "study_benign_recall"]


def read_raw(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return json.load(fh)


def score_job(job: dict, pool: dict, output: str) -> dict:
    classes = job["classes"]
    y = np.array([classes.index(lbl) for lbl in pool["labels"]])
    groups = np.array(pool["groups"])
    parts = np.array(pool["parts"][job["draw"]][job["fold"]])
    test, val = np.array(job["test"]), np.array(job["val"])
    same = np.array_equal(test, np.flatnonzero(parts == "test")) and np.array_equal(val, np.flatnonzero(parts == "val"))
    if not same:
        raise SystemExit(f"job {job['size']}/{job['draw']}/{job['fold']} was not run on the default's fold parts")
    if output == "p_test_blend":
        p_test, p_val = (np.mean([job[k.replace("test", part)] for k in BLEND], 0) for part in ("test", "val"))
    else:
        p_test, p_val = (np.array(job[output.replace("test", part)]) for part in ("test", "val"))
    p_test, p_val = p_test / p_test.sum(1, keepdims=True), p_val / p_val.sum(1, keepdims=True)  # stored rounded
    row = fold_metrics(y[test], p_test, groups[test], classes)
    temperature = fit_temperature(y[val], p_val)
    row["ece_calibrated"] = expected_calibration_error(y[test], temperature.apply(p_test))
    row["temperature"] = temperature.temperature
    return row


def summarise(rows: list[dict], keys: list[tuple[int, int]], default: dict[tuple[int, int], float]) -> dict:
    out = {}
    for m in [*METRICS, *STUDY, "ece_calibrated"]:
        v = np.array([r[m] for r in rows], dtype=float)
        out[m] = f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}"
    bal = np.array([r["balanced_accuracy"] for r in rows])
    draws = sorted({d for d, _ in keys})
    out["balanced_accuracy_per_draw"] = {
        d: round(float(np.mean([b for b, (dd, _) in zip(bal, keys, strict=True) if dd == d])), 3) for d in draws
    }
    base = np.array([default[k] for k in keys])
    diff = bal - base
    out["default_on_these_folds"] = round(float(base.mean()), 3)
    out["paired_vs_default"] = paired(diff)
    out["folds"] = len(rows)
    return out


def paired(diff: np.ndarray) -> str:
    """Mean ± sd of per-fold differences, and how many folds are not below."""
    return f"{diff.mean():+.3f} ± {diff.std(ddof=1):.3f} ({int((diff >= 0).sum())}/{len(diff)} not below)"


def dynamics(jobs: list[dict]) -> dict:
    """Mean over folds of the EMA model's validation balanced accuracy at each checked epoch, and the training loss."""
    out = {}
    for h in zip(*[j["history"] for j in jobs], strict=True):
        if "val_balanced_accuracy" in h[0]:
            out[f"epoch {h[0]['epoch']}"] = {
                "val_balanced_accuracy": round(float(np.mean([r["val_balanced_accuracy"] for r in h])), 3),
                "train_loss": round(float(np.mean([r["loss"] for r in h])), 3),
            }
    return out


def main(paths: list[Path]) -> None:
    pool = pool_and_parts()
    feature_levers = json.loads((RESULTS / "feature_levers.json").read_text())["last"]["balanced_accuracy_per_fold"]
    default = {(d, f): feature_levers[5 * d + f] for d in range(5) for f in range(5)}
    results = {}
    for path in paths:
        raw = read_raw(path)
        recipe = raw["env"]["recipe"].get("name", "long")
        results[f"{recipe}_run"] = {"env": raw["env"], "skipped_jobs": raw["skipped"], "failed_jobs": raw["failed"]}
        for size in sorted({j["size"] for j in raw["jobs"]}):
            jobs = sorted((j for j in raw["jobs"] if j["size"] == size), key=lambda j: (j["draw"], j["fold"]))
            keys = [(j["draw"], j["fold"]) for j in jobs]
            bal = {}
            for output, suffix in OUTPUTS.items():
                if output not in jobs[0] and not (output == "p_test_blend" and all(k in jobs[0] for k in BLEND)):
                    continue
                name = f"finetune_{recipe}_{size}{suffix}"
                rows = [score_job(j, pool, output) for j in jobs]
                bal[output] = np.array([r["balanced_accuracy"] for r in rows])
                results[name] = summarise(rows, keys, default)
                results[name]["train_seconds_per_fold"] = round(float(np.mean([j["train_seconds"] for j in jobs])), 1)
                if output != "p_test_probe" and "p_test_probe" in bal:
                    results[name]["paired_vs_probe_start"] = paired(bal[output] - bal["p_test_probe"])
                print(name, json.dumps(results[name]), flush=True)
            results[f"finetune_{recipe}_{size}_dynamics"] = dynamics(jobs)
            print(size, json.dumps(results[f"finetune_{recipe}_{size}_dynamics"]), flush=True)
    out = RESULTS / "gpu_finetune.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]] or RAW)
