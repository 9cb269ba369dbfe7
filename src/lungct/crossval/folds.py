"""Stratified group k-fold cross-validation: K runs, each tested on a fold it never saw, by whole groups.

One train/val/test split gives one number whose luck is unknown; K folds give a mean and a spread.
Groups (patients, look-alike slices) never cross folds, so no fold is scored on its own training patients.
Each fold is an ordinary run directory (fold_1/ ... fold_K/), so evaluate/predict work on it; a finished
fold is reused when the command is run again.

With `within` (a trained run), the folds cover only that run's development images (everything but its test
part). Their pooled out-of-fold predictions (oof_predictions.csv) are then honest held-out probabilities for
the run's recipe that never touched its test part: `lungct calibrate --from-cv` fits the temperature on them,
as scikit-learn's CalibratedClassifierCV(ensemble=False) fits its calibrator on cross_val_predict output.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungct.config import ExperimentConfig
from lungct.contracts import flat_metrics
from lungct.data.prepare import prepare_data
from lungct.data.splits import SplitItem, load_split, make_split, stratified_group_folds
from lungct.errors import LungCTError
from lungct.evaluation.bootstrap import paired_delta_ci
from lungct.evaluation.calibrate import HeldOutCheck, plot_reliability, temperature_check
from lungct.evaluation.metrics import calibration_metrics
from lungct.evaluation.oof import write_oof
from lungct.evaluation.study_level import study_metrics
from lungct.files import atomic_write, output_folder, refuse_foreign_output
from lungct.inference.calibration import TemperatureScaling
from lungct.run import RunDir, model_version, write_json
from lungct.training.trainer import train_or_reuse

log = logging.getLogger("lungct")


# Scalar metrics of metrics.json summarised across folds (per-class ones are added by name).
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")
# Per fold, one result per group (lungct.evaluation.study_level); per-class study recalls are in cv.json.
STUDY_COLUMNS = ("study.accuracy", "study.balanced_accuracy")
# Per fold: the temperature fitted on the fold's validation part, and the fold's test ECE after it.
CALIBRATION_COLUMNS = ("temperature", "ece_calibrated")
CALIBRATION_KEYS = ("ece", "nll", "brier")
BOOKKEEPING = ("fold", "n_test", "seconds", "train_seconds", "reused")
# A fold's kept temperature check (RUN/eval/); bump the version when evaluate's or the check's output changes.
FOLD_EVAL = "fold_eval.npz"
FOLD_EVAL_VERSION = 1


@dataclass(frozen=True)
class Pool:
    """The images cross-validation folds over, with their labels and groups."""

    paths: list[str]
    labels: list[str]
    groups: list[str]
    within_run: str | None = None  # the run whose test part was left out, when there is one


def pool_from_config(cfg: ExperimentConfig, progress: bool) -> Pool:
    data = prepare_data(cfg, progress)
    return Pool([s.path for s in data.samples], data.labels, data.groups)


def pool_within_run(run_dir: str | Path) -> Pool:
    """The run's development images (train, val, calib), grouped as its split grouped them; its test part is out."""
    run = RunDir(run_dir)
    items = [i for i in load_split(run.split) if i.part != "test"]
    if not items:
        raise LungCTError(f"{run.split} has no images outside its test part to cross-validate on")
    return Pool([i.path for i in items], [i.label for i in items], [i.group for i in items], str(run.path.resolve()))


def fold_splits(pool: Pool, folds: int, cfg: ExperimentConfig) -> list[list[SplitItem]]:
    """K splits: fold k is the test part; validation is carved from the rest by group, as in training."""
    labels, groups = np.asarray(pool.labels), np.asarray(pool.groups)
    if folds < 2:
        raise LungCTError(f"--folds must be at least 2, got {folds}")
    out = []
    for k, (_, test) in enumerate(stratified_group_folds(labels, groups, folds, cfg.seed, f"{folds}-fold cv")):
        preset: list[str | None] = ["train"] * len(labels)
        for i in test:
            preset[i] = "test"
        parts = make_split(pool.labels, pool.groups, cfg.split.val_fraction, 0.2, cfg.seed + k, preset)
        out.append([SplitItem(*row) for row in zip(pool.paths, pool.labels, pool.groups, parts, strict=True)])
    return out


@dataclass(frozen=True)
class FoldPlan:
    """The pool and its K splits, drawn before anything is written or tracked, so that --folds 1 or too few
    groups fail without leaving an empty cv folder or an MLflow run behind."""

    pool: Pool
    splits: list[list[SplitItem]]


def plan_folds(cfg: ExperimentConfig, folds: int, progress: bool = True, within: str | Path | None = None) -> FoldPlan:
    pool = pool_within_run(within) if within is not None else pool_from_config(cfg, progress)
    return FoldPlan(pool, fold_splits(pool, folds, cfg))


def _fold_columns(metrics: dict) -> dict[str, float | None]:
    """The headline metrics and each class's recall, specificity and AUC, from the one flattening."""
    flat = flat_metrics(metrics)
    keys = [*HEADLINE, *(f"{c}.{k}" for c in metrics["classes"] for k in ("recall", "specificity", "auc"))]
    return {k: flat.get(k) for k in keys}


def summarise(rows: list[dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Mean, sample standard deviation, min and max of each metric over the folds (None values skipped)."""
    out = {}
    for key in rows[0]:
        values = np.array([r[key] for r in rows if r.get(key) is not None], dtype=float)
        if len(values) == 0:
            out[key] = {"mean": None, "std": None, "min": None, "max": None}
            continue
        out[key] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return out


def cross_validate(
    cfg: ExperimentConfig,
    folds: int,
    out: str | Path,
    progress: bool = True,
    n_bootstrap: int = 1000,
    within: str | Path | None = None,
    plan: FoldPlan | None = None,
) -> dict:
    """Train and test K folds; write cv.json, cv.csv (one row per fold), cv.md and oof_predictions.csv into `out`.

    `within`: fold over that run's split without its test part, instead of over the config's data.
    `plan`: `plan_folds(cfg, folds, within=within)` when the caller drew it already (the CLI does, before tracking).
    """
    started = time.time()
    refuse_foreign_output(Path(out), ("cv.json", "fold_[0-9]*"), "no cv.json or fold_1", "cv")
    plan = plan or plan_folds(cfg, folds, progress, within)
    if len(plan.splits) != folds:
        raise ValueError(f"the fold plan holds {len(plan.splits)} folds, not {folds}")
    pool = plan.pool
    out = output_folder(out, "--out")
    rows, checks = [], []
    for k, items in enumerate(plan.splits, start=1):
        fold_dir = out / f"fold_{k}"
        t0 = time.time()
        log.info("fold %d/%d", k, folds)
        run, trained = train_or_reuse(cfg, fold_dir, items, progress)
        reused = not trained
        metrics, check = evaluate_fold(run, k, reused, progress, n_bootstrap)
        checks.append(check)
        row = {
            "fold": k,
            "n_test": metrics["n"],
            **_fold_columns(metrics),
            **study_metrics(check.y, check.before, check.groups, run.card().classes),
            "temperature": check.temperature,
            "ece_calibrated": calibration_metrics(check.y, check.after)["ece"],
            "seconds": round(time.time() - t0, 1),
            "train_seconds": run.read_summary().train_seconds,
            "reused": reused,
        }
        rows.append(row)
        log.info("fold %d/%d: accuracy %.3f macro_auc %s", k, folds, row["accuracy"], row["macro_auc"])
    metric_rows = [{k: v for k, v in r.items() if k not in BOOKKEEPING} for r in rows]
    write_oof(out, folds)
    result = {
        "folds": folds,
        "split_mode": cfg.split.mode,
        "within_run": pool.within_run,
        "n_images": len(pool.paths),
        "n_groups": len(set(pool.groups)),
        "per_fold": rows,
        "summary": summarise(metric_rows),
        "calibration": fold_calibration(checks),
        "seconds": round(time.time() - started, 1),
    }
    write_json(out / "cv.json", result)
    with (out / "cv.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "cv.md").write_text(cv_markdown(result), encoding="utf-8")
    return result


def evaluate_fold(run: RunDir, k: int, reused: bool, progress: bool, n_bootstrap: int) -> tuple[dict, HeldOutCheck]:
    """A fold's test metrics (`lungct evaluate`) and its temperature check, kept in RUN/eval.

    A fold reused from an interrupted `lungct cv` keeps the evaluation it already has when that evaluation is of
    the same weights and settings (FOLD_EVAL's key). Without this, resuming a row at its last fold predicted every
    finished fold's test part twice and its validation part once more: 23 minutes for the tiled 512 px row on 2
    cores before fold 5 started.
    """
    from lungct.evaluation.evaluate import evaluate

    key = json.dumps({"cache": FOLD_EVAL_VERSION, "model": model_version(run), "n_bootstrap": n_bootstrap})
    cached = load_fold_eval(run.path / "eval", key) if reused else None
    if cached is not None:
        log.info("fold %d: evaluation of these weights reused from %s", k, run.path / "eval")
        return cached
    metrics = evaluate(run.path, run.path / "eval", None, progress, n_bootstrap)
    check = temperature_check(run.path)
    title = f"fold {k} test part ({len(check.y)} images), T = {check.temperature:.3f} fitted on validation"
    plot_reliability(check.y, check.before, check.after, title, run.path / "eval" / "reliability_temperature.png")
    save_fold_eval(run.path / "eval", key, check)
    return metrics, check


def save_fold_eval(eval_dir: Path, key: str, check: HeldOutCheck) -> None:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        key=np.array(key),
        temperature=np.array(check.temperature),
        y=check.y,
        before=check.before,  # `after` is derived on load: the temperature applied to `before`
        groups=np.array(check.groups, dtype=str),
        metrics_sha256=np.array(hashlib.sha256((eval_dir / "metrics.json").read_bytes()).hexdigest()),
    )
    atomic_write(eval_dir / FOLD_EVAL, buffer.getvalue())


def load_fold_eval(eval_dir: Path, key: str) -> tuple[dict, HeldOutCheck] | None:
    """The kept evaluation, or None when it is missing, damaged, of other weights or settings, or when metrics.json
    is no longer the one it was kept with."""
    try:
        with np.load(eval_dir / FOLD_EVAL, allow_pickle=False) as kept:
            if str(kept["key"]) != key:
                return None
            scaler = TemperatureScaling(float(kept["temperature"]))
            before = kept["before"]
            groups = [str(g) for g in kept["groups"]]
            check = HeldOutCheck(scaler.temperature, kept["y"], before, scaler.apply(before), groups)
            kept_sha256 = str(kept["metrics_sha256"])
        metrics_bytes = (eval_dir / "metrics.json").read_bytes()
        if hashlib.sha256(metrics_bytes).hexdigest() != kept_sha256:  # evaluated again since, e.g. with --tta
            return None
        metrics = json.loads(metrics_bytes)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # json's decode error is a ValueError
        log.info("%s: evaluating again (%s)", eval_dir, type(exc).__name__)
        return None
    return metrics, check


def fold_calibration(checks: list[HeldOutCheck]) -> dict:
    """Mean over folds of each fold's test ECE, NLL and Brier, before and after its validation-fitted temperature.

    Averaged per fold, not pooled: each fold is its own model, and pooling an over-confident fold with an
    under-confident one lets their errors cancel in the reliability bins. Groups never cross folds, so
    resampling whole groups of all folds at once gives a paired interval of the mean change.
    """
    y = np.concatenate([c.y for c in checks])
    before = np.concatenate([c.before for c in checks])
    after = np.concatenate([c.after for c in checks])
    fold = np.concatenate([np.full(len(c.y), k) for k, c in enumerate(checks)])
    groups = [g for c in checks for g in c.groups]

    def mean_over_folds(idx: np.ndarray, probs: np.ndarray, key: str) -> float:
        per_fold = [idx[fold[idx] == k] for k in range(len(checks))]
        return float(np.mean([calibration_metrics(y[i], probs[i])[key] for i in per_fold if len(i)]))

    def delta(key: str):
        return lambda idx: mean_over_folds(idx, after, key) - mean_over_folds(idx, before, key)

    everything = np.arange(len(y))
    ece = [(calibration_metrics(c.y, c.before)["ece"], calibration_metrics(c.y, c.after)["ece"]) for c in checks]
    return {
        "method": "temperature fitted on each fold's validation (or calibration) part, applied to its test part",
        "folds_with_lower_ece": sum(after < before for before, after in ece),
        "mean_before": {key: mean_over_folds(everything, before, key) for key in CALIBRATION_KEYS},
        "mean_after": {key: mean_over_folds(everything, after, key) for key in CALIBRATION_KEYS},
        "change": {key: paired_delta_ci(delta(key), len(y), groups, n_resamples=300) for key in CALIBRATION_KEYS},
    }


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def cv_markdown(result: dict) -> str:
    """The per-fold table and mean ± sd of the headline metrics, for reports and the README."""
    cols = ["fold", "n_test", *HEADLINE, *STUDY_COLUMNS, *CALIBRATION_COLUMNS]
    reused = sum(bool(r.get("reused")) for r in result["per_fold"])
    trained = sum(r.get("train_seconds") or 0 for r in result["per_fold"])
    lines = [
        f"# {result['folds']}-fold stratified group cross-validation (split mode: {result['split_mode']})",
        "",
        f"{result['n_images']} images in {result['n_groups']} groups. This invocation took {result['seconds']:.0f} s"
        f" ({reused} of {result['folds']} folds reused); training the folds took {trained:.0f} s.",
        *([f"Within run {result['within_run']}: its test part was left out."] if result.get("within_run") else []),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in result["per_fold"]:
        lines.append("| " + " | ".join(str(r[c]) if c in ("fold", "n_test") else _fmt(r.get(c)) for c in cols) + " |")
    s = result["summary"]
    lines.append(
        "| mean ± sd | | "
        + " | ".join(f"{_fmt(s[m]['mean'])} ± {_fmt(s[m]['std'])}" for m in cols[2:] if m in s)
        + " |"
    )
    cal = result.get("calibration")
    if cal:
        b, a, c = cal["mean_before"], cal["mean_after"], cal["change"]
        lines += [
            "",
            f"Calibration ({cal['method']}; fold_k/eval/reliability_temperature.png): test ECE lower in "
            f"{cal['folds_with_lower_ece']} of {result['folds']} folds. Mean over folds: "
            + "; ".join(
                f"{k.upper()} {b[k]:.3f} -> {a[k]:.3f} (change {c[k]['delta']:+.3f}, 95% paired group-bootstrap "
                f"interval [{c[k]['ci95'][0]:+.3f}, {c[k]['ci95'][1]:+.3f}])"
                for k in CALIBRATION_KEYS
            )
            + ".",
        ]
    lines += ["", "All metrics (mean ± sd over folds, min–max):", ""]
    lines += [f"- {m}: {_fmt(v['mean'])} ± {_fmt(v['std'])} ({_fmt(v['min'])}–{_fmt(v['max'])})" for m, v in s.items()]
    return "\n".join(lines) + "\n"
