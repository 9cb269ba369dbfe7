"""Stratified group k-fold cross-validation: K runs, each tested on a fold it never saw, by whole groups.

One train/val/test split gives one number whose luck is unknown; K folds give a mean and a spread.
Groups (patients, look-alike slices) never cross folds, so no fold is scored on its own training patients.
Each fold is an ordinary run directory (fold_1/ ... fold_K/), so evaluate/predict work on it; a finished
fold is reused when the command is run again.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from lungct.config import ExperimentConfig
from lungct.data.prepare import PreparedData, prepare_data
from lungct.data.splits import SplitItem, make_split, save_split
from lungct.errors import LungCTError
from lungct.run import RunDir, write_json
from lungct.training.trainer import Trainer

log = logging.getLogger("lungct")

# Scalar metrics of metrics.json summarised across folds (per-class ones are added by name).
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")


class _FoldTrainer(Trainer):
    """A Trainer whose split is given (the fold) instead of drawn from the config."""

    def __init__(self, cfg: ExperimentConfig, out: Path, items: list[SplitItem], progress: bool):
        super().__init__(cfg, out, progress, overwrite=True)
        self._given = items

    def _items(self) -> tuple[list[SplitItem], list[dict]]:
        save_split(self._given, self.run.split)
        return self._given, []


def fold_splits(data: PreparedData, folds: int, cfg: ExperimentConfig) -> list[list[SplitItem]]:
    """K splits: fold k is the test part; validation is carved from the rest by group, as in training."""
    labels, groups = np.asarray(data.labels), np.asarray(data.groups)
    n_groups = len(set(data.groups))
    if folds < 2:
        raise LungCTError(f"--folds must be at least 2, got {folds}")
    if n_groups < folds:
        raise LungCTError(f"only {n_groups} groups: too few for {folds} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    out = []
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        preset: list[str | None] = ["train"] * len(labels)
        for i in test:
            preset[i] = "test"
        parts = make_split(data.labels, data.groups, cfg.split.val_fraction, 0.2, cfg.seed + k, preset)
        out.append([SplitItem(s.path, s.label, g, p) for s, g, p in zip(data.samples, data.groups, parts, strict=True)])
    return out


def _same_config(run: RunDir, cfg: ExperimentConfig) -> bool:
    """A finished fold is reused only if it was trained with this very config."""
    from lungct.config import load_config

    return run.config.is_file() and load_config(run.config).model_dump() == cfg.model_dump()


def _flatten(metrics: dict) -> dict[str, float | None]:
    row = {m: metrics.get(m) for m in HEADLINE}
    for name, c in metrics["classes"].items():
        for key in ("recall", "specificity", "auc"):
            row[f"{name}.{key}"] = c.get(key)
    return row


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
    cfg: ExperimentConfig, folds: int, out: str | Path, progress: bool = True, n_bootstrap: int = 1000
) -> dict:
    """Train and test K folds; write cv.json, cv.csv (one row per fold) and cv.md into `out`."""
    from lungct.evaluation.evaluate import evaluate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = prepare_data(cfg, progress)
    rows = []
    for k, items in enumerate(fold_splits(data, folds, cfg), start=1):
        fold_dir = out / f"fold_{k}"
        run = RunDir(fold_dir)
        t0 = time.time()
        if run.read_summary().get("status") == "complete" and _same_config(run, cfg):
            log.info("fold %d/%d: reusing the finished run in %s", k, folds, fold_dir)
        else:
            log.info("fold %d/%d: training", k, folds)
            _FoldTrainer(cfg, fold_dir, items, progress).fit()
        metrics = evaluate(fold_dir, fold_dir / "eval", None, progress, n_bootstrap)
        row = {"fold": k, "n_test": metrics["n"], **_flatten(metrics), "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        log.info("fold %d/%d: accuracy %.3f macro_auc %s", k, folds, row["accuracy"], row["macro_auc"])
    metric_rows = [{k: v for k, v in r.items() if k not in ("fold", "n_test", "seconds")} for r in rows]
    result = {
        "folds": folds,
        "split_mode": cfg.split.mode,
        "n_images": len(data.samples),
        "n_groups": len(set(data.groups)),
        "per_fold": rows,
        "summary": summarise(metric_rows),
        "seconds": round(time.time() - started, 1),
    }
    write_json(out / "cv.json", result)
    with (out / "cv.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "cv.md").write_text(cv_markdown(result))
    return result


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def cv_markdown(result: dict) -> str:
    """The per-fold table and mean ± sd of the headline metrics, for reports and the README."""
    cols = ["fold", "n_test", *HEADLINE]
    lines = [
        f"# {result['folds']}-fold stratified group cross-validation (split mode: {result['split_mode']})",
        "",
        f"{result['n_images']} images in {result['n_groups']} groups; {result['seconds']:.0f} s in all.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in result["per_fold"]:
        lines.append("| " + " | ".join(str(r[c]) if c in ("fold", "n_test") else _fmt(r[c]) for c in cols) + " |")
    s = result["summary"]
    lines.append(
        "| mean ± sd | | " + " | ".join(f"{_fmt(s[m]['mean'])} ± {_fmt(s[m]['std'])}" for m in HEADLINE) + " |"
    )
    lines += ["", "All metrics (mean ± sd over folds, min–max):", ""]
    lines += [f"- {m}: {_fmt(v['mean'])} ± {_fmt(v['std'])} ({_fmt(v['min'])}–{_fmt(v['max'])})" for m, v in s.items()]
    return "\n".join(lines) + "\n"
