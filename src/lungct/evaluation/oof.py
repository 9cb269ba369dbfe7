"""Pooled out-of-fold predictions of a `lungct cv` folder (oof_predictions.csv): written by lungct.crossval,
read by cross-fitted calibration, so the format lives here, below both."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungct.data.splits import load_split
from lungct.errors import LungCTError
from lungct.run import RunDir

OOF_FILE = "oof_predictions.csv"


def fold_predictions(out: Path, k: int) -> list[dict]:
    """Fold k's test predictions (its eval/predictions.csv), each row with its fold and group: one oof table row."""
    groups = {i.path: i.group for i in load_split(RunDir(out / f"fold_{k}").split)}
    with (out / f"fold_{k}" / "eval" / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        return [{"fold": k, "group": groups[r["path"]], **r} for r in csv.DictReader(fh)]


def write_oof(out: Path, folds: int) -> None:
    """Pool every fold's test predictions (uncalibrated: fold runs are never calibrated) into one table."""
    rows = [row for k in range(1, folds + 1) for row in fold_predictions(out, k)]
    with (out / OOF_FILE).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@dataclass(frozen=True)
class OutOfFold:
    """Pooled held-out predictions of a cv folder."""

    paths: list[str]
    labels: list[str]
    probs: np.ndarray  # columns in `classes` order
    classes: list[str]
    within_run: str | None


def load_oof(cv_dir: str | Path) -> OutOfFold:
    cv_dir = Path(cv_dir)
    table, summary = cv_dir / OOF_FILE, cv_dir / "cv.json"
    if not table.is_file() or not summary.is_file():
        raise LungCTError(f"{cv_dir} is not a finished `lungct cv` folder: {OOF_FILE} or cv.json is missing")
    with table.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        classes = [c[2:] for c in reader.fieldnames or [] if c.startswith("p_")]
        rows = list(reader)
    if not rows or not classes:
        raise LungCTError(f"{table} holds no predictions")
    try:
        probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
        within = json.loads(summary.read_text(encoding="utf-8")).get("within_run")
    except (ValueError, json.JSONDecodeError) as exc:
        raise LungCTError(f"{cv_dir} is damaged: {exc}") from exc
    return OutOfFold([r["path"] for r in rows], [r["label"] for r in rows], probs, classes, within)
