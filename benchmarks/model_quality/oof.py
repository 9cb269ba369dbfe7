"""A cv folder's out-of-fold predictions (`CV_DIR/oof_predictions.csv`, every fold's test part) as arrays, one
reader for the scripts that score them."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class OutOfFold:
    paths: np.ndarray
    fold: np.ndarray
    groups: np.ndarray
    y: np.ndarray  # class index into `classes`
    predicted: np.ndarray  # the fold model's predicted class index
    p: np.ndarray  # (n, classes) uncalibrated probabilities
    classes: list[str]


def row_dir(name: str) -> Path:
    """The cv folder of a row of the study."""
    return ROOT / "runs" / "model_quality" / name


def read_oof(cv_dir: Path) -> OutOfFold:
    """Rows sorted by path, so two cv folders over the same pool line up slice by slice."""
    with (cv_dir / "oof_predictions.csv").open(newline="") as fh:
        return oof_from_rows(list(csv.DictReader(fh)))


def oof_from_rows(rows: list[dict]) -> OutOfFold:
    """Rows of the oof table (lungct.evaluation.oof) as arrays, sorted by path."""
    rows = sorted(rows, key=lambda r: r["path"])
    classes = [c[2:] for c in rows[0] if c.startswith("p_")]
    return OutOfFold(
        paths=np.array([r["path"] for r in rows]),
        fold=np.array([int(r["fold"]) for r in rows]),
        groups=np.array([r["group"] for r in rows]),
        y=np.array([classes.index(r["label"]) for r in rows]),
        predicted=np.array([classes.index(r["predicted"]) for r in rows]),
        p=np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows]),
        classes=classes,
    )


def study_mean(p: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each slice given the mean probability vector of its study's slices (what `predict-series --aggregate mean`
    decides per study), so a study counts once per slice as in the slice-level figures."""
    names, index = np.unique(groups, return_inverse=True)
    sums = np.zeros((len(names), p.shape[1]))
    np.add.at(sums, index, p)
    return (sums / np.bincount(index)[:, None])[index]


def print_summary(summary: dict[str, dict[str, list[float]]], cols: list[str]) -> None:
    """A markdown table of `{row: {metric: [mean, sd]}}`, one line per row, the metrics in `cols` order."""
    print("| | " + " | ".join(cols) + " |")
    for key, s in summary.items():
        print(f"| {key} | " + " | ".join(f"{s[c][0]:.3f} ± {s[c][1]:.3f}" for c in cols) + " |")
