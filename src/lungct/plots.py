"""Figures: training curves, confusion matrix and one-vs-rest ROC curves (matplotlib, sklearn displays)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay


def plot_history(history_csv: Path, out: Path) -> None:
    with history_csv.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    x = np.arange(1, len(rows) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for part in ("train", "val"):
            ax.plot(x, [float(r[f"{part}_{metric}"]) for r in rows], marker="o", label=part)
        switches = [i + 1 for i in range(1, len(rows)) if rows[i]["phase"] != rows[i - 1]["phase"]]
        for s in switches:
            ax.axvline(s - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch (dashed line: fine-tuning starts)" if switches else "epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], labels: list[str], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.2 * len(labels) + 2.5))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=labels).plot(ax=ax, colorbar=False, cmap="Blues")
    ax.set_title("Confusion matrix (rows: true, columns: predicted)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: list[str], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for k, name in enumerate(classes):
        positives = y_true == k
        if 0 < positives.sum() < len(y_true):
            RocCurveDisplay.from_predictions(positives, probs[:, k], name=name, ax=ax)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_title("ROC, one class against the rest")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
