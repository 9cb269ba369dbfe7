"""The app's model page, without Streamlit: what a run says about itself (card, curves, test metrics).

Every part is optional: a run without an evaluation, or an older metrics.json without confidence intervals,
gives a `message` saying what is missing and which command writes it, instead of an error.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from lungct.run import RunDir

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")
CLASS_METRICS = ("precision", "recall", "specificity", "f1", "auc")


@dataclass
class EvalInfo:
    folder: Path
    metrics: dict | None = None
    summary_rows: list[dict] = field(default_factory=list)  # metric, value, 95% CI
    class_rows: list[dict] = field(default_factory=list)  # class, support, then "metric" and "metric 95% CI"
    confusion_png: Path | None = None
    roc_png: Path | None = None
    message: str | None = None  # why something is missing


@dataclass
class HistoryInfo:
    curves_png: Path | None = None
    rows: list[dict] = field(default_factory=list)  # history.csv as numbers (for a chart when no PNG)
    message: str | None = None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _ci(ci95: dict | None, key: str) -> str:
    pair = (ci95 or {}).get(key)
    if not pair or pair[0] is None or pair[1] is None:
        return "n/a"
    return f"{pair[0]:.3f} – {pair[1]:.3f}"


def summary_rows(metrics: dict) -> list[dict]:
    ci95 = metrics.get("ci95")
    return [
        {"metric": m, "value": _fmt(metrics.get(m)), "95% CI": _ci(ci95, m)} for m in SUMMARY_METRICS if m in metrics
    ]


def class_rows(metrics: dict) -> list[dict]:
    ci95 = metrics.get("ci95")
    rows = []
    for name, values in (metrics.get("classes") or {}).items():
        row = {"class": name, "support": int(values.get("support", 0))}
        for m in CLASS_METRICS:
            row[m] = _fmt(values.get(m))
            row[f"{m} 95% CI"] = _ci(ci95, f"{name}.{m}")
        rows.append(row)
    return rows


def eval_info(run_dir: str | Path, eval_dir: str | Path | None = None) -> EvalInfo:
    """The run's test report (RUN/eval by default), as tables and plot paths."""
    run = RunDir(run_dir)
    folder = Path(eval_dir) if eval_dir else run.path / "eval"
    info = EvalInfo(folder)
    path = folder / "metrics.json"
    hint = f"write it with: lungct evaluate --run {run.path} --out {folder}"
    if not path.is_file():
        info.message = f"This run has no test metrics yet ({path} not found); {hint}"
        return info
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
        info.summary_rows, info.class_rows = summary_rows(metrics), class_rows(metrics)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        info.message = f"{path} cannot be read ({exc}); {hint}"
        return info
    info.metrics = metrics
    if "ci95" not in metrics:
        info.message = f"{path} has no confidence intervals (it predates them); {hint}"
    info.confusion_png = folder / "confusion_matrix.png" if (folder / "confusion_matrix.png").is_file() else None
    info.roc_png = folder / "roc.png" if (folder / "roc.png").is_file() else None
    return info


def history_info(run_dir: str | Path) -> HistoryInfo:
    """curves.png when training drew it, else history.csv's numbers for the page to chart."""
    run = RunDir(run_dir)
    if run.curves.is_file():
        return HistoryInfo(curves_png=run.curves)
    if not run.history.is_file():
        return HistoryInfo(message=f"This run has no training history ({run.history.name} not found).")
    try:
        with run.history.open(newline="", encoding="utf-8") as fh:
            rows = [_numbers(r) for r in csv.DictReader(fh)]
    except (OSError, csv.Error, ValueError) as exc:
        return HistoryInfo(message=f"{run.history} cannot be read ({exc}).")
    if not rows:
        return HistoryInfo(message=f"{run.history} is empty.")
    for i, row in enumerate(rows, 1):  # one x axis across both fine-tuning phases
        row["step"] = i
    return HistoryInfo(rows=rows)


def _numbers(row: dict) -> dict:
    out: dict = {}
    for key, value in row.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def card_rows(run_dir: str | Path) -> list[dict]:
    """A few facts about the model for the model page: backbone, classes, input, weights, data sizes."""
    run = RunDir(run_dir)
    card = run.card()
    rows = [
        {"item": "run", "value": run.path.resolve().name},
        {"item": "backbone", "value": f"{card.arch} ({card.timm_name})"},
        {"item": "classes", "value": ", ".join(card.classes)},
        {"item": "input", "value": f"{card.preprocess.input_size} px, {card.preprocess.color}"},
        {"item": "pretrained weights", "value": card.weights_source or ("yes" if card.pretrained else "none")},
    ]
    calibration = run.path / "calibration.json"
    rows.append({"item": "calibration", "value": "calibration.json" if calibration.is_file() else "none"})
    summary = run.read_summary()
    for part, per_class in summary.counts.items():
        if isinstance(per_class, dict) and any(per_class.values()):
            total = sum(int(v) for v in per_class.values())
            detail = ", ".join(f"{k} {v}" for k, v in per_class.items())
            rows.append({"item": f"{part} images", "value": f"{total} ({detail})"})
    return rows
