"""Study-level results: per-slice probabilities of a series, aggregated into one score per study.

A study is positive when any part of it is, so "max" is the default; "mean" and "topk" (mean of the
k highest slices) trade sensitivity for robustness to a single noisy slice. Each result names the
slices that drove it by hash or file name only, so no patient tag reaches the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from lungct.contracts import Prediction
from lungct.data.images import is_blank
from lungct.dicom.hounsfield import default_window
from lungct.dicom.series import Series
from lungct.dicom.window import to_image
from lungct.errors import LungCTError
from lungct.inference.predictor import LINE_FIELDS

Aggregate = Literal["max", "mean", "topk"]


@dataclass
class StudyResult:
    slices: list[dict]  # per slice, in slice order: its index and id, then a Prediction's label and probabilities
    study: dict
    extra: dict = field(default_factory=dict)


def aggregate(scores: np.ndarray, method: str = "max", top_k: int = 3) -> tuple[float, list[int]]:
    """The study score and the indices (into `scores`) of the slices that drove it, highest first."""
    if scores.size == 0:
        raise LungCTError("no slices to aggregate")
    if top_k < 1:
        raise LungCTError("--top-k must be at least 1")
    ranked = [int(i) for i in np.argsort(-scores, kind="stable")]
    if method == "max":
        return float(scores[ranked[0]]), ranked[:1]
    if method == "mean":
        return float(scores.mean()), ranked[: min(top_k, len(ranked))]
    if method == "topk":
        top = ranked[: min(top_k, len(ranked))]
        return float(scores[top].mean()), top
    raise LungCTError(f"unknown aggregate {method!r}; choose max, mean or topk")


def resolve_positive_class(classes: list[str], card_positive: str | None, requested: str | None) -> str:
    name = requested or card_positive or ("malignant" if "malignant" in classes else None)
    if name is None:
        raise LungCTError(f"the model has no positive class; pass --positive-class (one of {', '.join(classes)})")
    if name not in classes:
        raise LungCTError(f"positive class {name!r} is not one of the model's classes ({', '.join(classes)})")
    return name


def predict_series(
    predictor,
    series: Series,
    method: str = "max",
    top_k: int = 3,
    positive_class: str | None = None,
    threshold: float = 0.5,
    window: str | None = None,
    batch_size: int = 16,
) -> StudyResult:
    """Per-slice predictions (a lungct.inference.Predictor's model) and the study-level result.

    window: the Hounsfield window; None uses the one the model was trained with (its preprocess).
    """
    pre = predictor.card.preprocess
    window = window or default_window(pre.color, getattr(pre, "dicom_window", None))
    classes = list(predictor.classes)
    positive = resolve_positive_class(classes, predictor.card.positive_class, positive_class)
    probs: list[np.ndarray] = []
    familiarity: list[dict] = []
    blank: list[bool] = []
    for start in range(0, len(series.slices), batch_size):
        images = [to_image(s.dataset, window, pre.color, s.name) for s in series.slices[start : start + batch_size]]
        blank += [is_blank(img) for img in images]
        batch = np.stack([pre.to_array(pre.apply_field(img)) for img in images])
        batch_probs, features = predictor.probabilities_and_features(batch)
        probs.append(batch_probs)
        familiarity += predictor.context(features)
    all_probs = np.concatenate(probs)
    scores = all_probs[:, classes.index(positive)]
    # A slice of one grey level (air alone, say) has nothing to classify, yet the model gives it a label (a black
    # slice read "malignant" at 0.85), so it is reported with the others but never counted in the study's score.
    counted = np.flatnonzero(~np.array(blank))
    if counted.size == 0:
        raise LungCTError(f"{Path(series.source).name}: every slice is blank (one grey level in the {window} window)")
    score, ranked = aggregate(scores[counted], method, top_k)
    drivers = [int(counted[i]) for i in ranked]
    predictions = [Prediction.from_probabilities(classes, p, **c) for p, c in zip(all_probs, familiarity, strict=True)]
    slices = [
        {"slice": i, "id": s.id, **p.model_dump(mode="json", include=LINE_FIELDS)}
        for i, (s, p) in enumerate(zip(series.slices, predictions, strict=True))
    ]
    study = {
        "study": True,
        "n_slices": len(slices),
        "order": series.order,
        "window": window,
        "positive_class": positive,
        "aggregate": method if method != "topk" else f"top{min(top_k, counted.size)}",
        "score": round(score, 6),
        "threshold": threshold,
        "label": positive if score >= threshold else f"not {positive}",
        "driving_slices": [
            {"slice": i, "id": series.slices[i].id, "score": round(float(scores[i]), 6)} for i in drivers
        ],
        "skipped_files": len(series.skipped),
        "blank_slices": [i for i, b in enumerate(blank) if b],
    }
    if predictor.familiarity is not None:  # slices unlike the training images: their labels, the score's, mean little
        study["unfamiliar_slices"] = [i for i, c in enumerate(familiarity) if not c["familiar"]]
    return StudyResult(slices, study)
