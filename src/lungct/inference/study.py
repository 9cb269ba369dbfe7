"""Study-level results: per-slice probabilities of a series, aggregated into one score per study.

A study is positive when any part of it is, so "max" is the default; "mean" and "topk" (mean of the
k highest slices) trade sensitivity for robustness to a single noisy slice. Each result names the
slices that drove it by hash or file name only, so no patient tag reaches the output.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from lungct.contracts import Prediction
from lungct.data.images import MIN_SIDE, ImageReadError, is_blank, is_dicom_file, load_image
from lungct.dicom.hounsfield import default_window
from lungct.dicom.series import MAX_SLICES, Series
from lungct.dicom.window import to_image
from lungct.errors import LungCTError
from lungct.inference.predictor import LINE_FIELDS, expand_paths

Aggregate = Literal["max", "mean", "topk"]


@dataclass
class StudyResult:
    slices: list[dict]  # per slice, in slice order: its index and id, then a Prediction's label and probabilities
    study: dict
    extra: dict = field(default_factory=dict)


@dataclass
class ImageSeries:
    """One study as image files, a slice per file: the 16-bit PNG or TIFF exports of research archives (read with
    the run's or the caller's hu_offset), or display slices. Image files carry no slice positions, so the slices are
    in natural file-name order (2.png before 10.png), which is how such exports number them."""

    source: str
    paths: list[Path]
    order: str = "name"
    skipped: list[str] = field(default_factory=list)


def image_series(folder: str | Path) -> ImageSeries | None:
    """The folder's image files as a series, or None when it holds DICOM files (then it is a DICOM series)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = expand_paths([folder])
    if any(is_dicom_file(f) for f in files):
        return None
    if len(files) > MAX_SLICES:
        raise LungCTError(f"{folder}: more than {MAX_SLICES} slices; is this one series?")
    kept = set(files)
    skipped = [  # a README, notes: counted in the study line, as a DICOM series counts its non-DICOM files
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p not in kept
    ]
    return ImageSeries(str(folder), files, skipped=skipped)


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


def _slice_images(series: Series | ImageSeries, window: str | None, pre) -> Iterator[tuple[str, Image.Image | str]]:
    """(id, image as the model's preprocessing reads it before its field crop, or why it cannot be read) per slice.

    A DICOM series was checked whole when it was loaded; an image file that cannot be read (a blank slice among
    them) is reported on its own line and left out of the study, as `lungct predict` does with a batch.
    """
    if isinstance(series, Series):
        for s in series.slices:
            image = to_image(s.dataset, window, pre.color, s.name)
            if min(image.size) < MIN_SIDE:  # as for image files: a 2x2 series still got "malignant"
                w, h = image.size
                raise LungCTError(
                    f"{Path(series.source).name}: slices of {w}x{h} pixels, too small for a CT slice "
                    f"(at least {MIN_SIDE} a side)"
                )
            yield s.id, image
        return
    for path in series.paths:
        name = str(path.relative_to(series.source))
        try:
            yield name, load_image(path, pre.color, window, pre.hu_offset)
        except ImageReadError as exc:
            yield name, exc.reason


def predict_series(
    predictor,
    series: Series | ImageSeries,
    method: str = "max",
    top_k: int = 3,
    positive_class: str | None = None,
    threshold: float = 0.5,
    window: str | None = None,
    batch_size: int = 16,
) -> StudyResult:
    """Per-slice predictions (a lungct.inference.Predictor's model) and the study-level result.

    window: the Hounsfield window; None uses the one the model was trained with (its preprocess). An image series
    has one only when its files are read as HU (the predictor's hu_offset); display slices are read as they are.
    """
    pre = predictor.card.preprocess
    if isinstance(series, ImageSeries) and pre.hu_offset is None:
        if window is not None:
            raise LungCTError("--window applies to DICOM series and to image files read as HU (--hu-offset)")
    else:
        window = window or default_window(pre.color, getattr(pre, "dicom_window", None))
    classes = list(predictor.classes)
    positive = resolve_positive_class(classes, predictor.card.positive_class, positive_class)
    ids: list[str] = []
    errors: dict[int, str] = {}
    read: list[int] = []  # slices that were read, in order; probs and familiarity rows follow it
    probs: list[np.ndarray] = []
    familiarity: list[dict] = []
    blank: list[int] = []
    pending: list[tuple[int, Image.Image]] = []

    def flush() -> None:
        if pending:
            batch = np.stack([pre.to_array(pre.apply_field(img)) for _, img in pending])
            batch_probs, features = predictor.probabilities_and_features(batch)
            probs.append(batch_probs)
            familiarity.extend(predictor.context(features))
            read.extend(i for i, _ in pending)
            pending.clear()

    for i, (slice_id, image) in enumerate(_slice_images(series, window, pre)):
        ids.append(slice_id)
        if isinstance(image, str):
            errors[i] = image
            continue
        if is_blank(image):
            blank.append(i)
        pending.append((i, image))
        if len(pending) == batch_size:
            flush()
    flush()
    name = Path(series.source).name
    if not read:
        first = min(errors)
        raise LungCTError(f"{name}: no slice could be read ({ids[first]}: {errors[first]})")
    all_probs = np.concatenate(probs)
    scores = all_probs[:, classes.index(positive)]
    # A slice of one grey level (air alone, say) has nothing to classify, yet the model gives it a label (a black
    # slice read "malignant" at 0.85), so it is reported with the others but never counted in the study's score.
    counted = np.flatnonzero(~np.isin(read, blank))
    if counted.size == 0:
        where = f"in the {window} window" if window else "in the file"
        raise LungCTError(f"{name}: every slice is blank (one grey level {where})")
    score, ranked = aggregate(scores[counted], method, top_k)
    drivers = [int(counted[k]) for k in ranked]  # rows of `read`
    lines = {
        i: {
            "slice": i,
            "id": ids[i],
            **Prediction.from_probabilities(classes, p, **c).model_dump(mode="json", include=LINE_FIELDS),
        }
        for i, p, c in zip(read, all_probs, familiarity, strict=True)
    }
    lines |= {i: {"slice": i, "id": ids[i], "error": reason} for i, reason in errors.items()}
    study = {
        "study": True,
        "n_slices": len(ids),
        "order": series.order,
        "window": window,
        "positive_class": positive,
        "aggregate": method if method != "topk" else f"top{min(top_k, counted.size)}",
        "score": round(score, 6),
        "threshold": threshold,
        "label": positive if score >= threshold else f"not {positive}",
        "driving_slices": [
            {"slice": read[k], "id": ids[read[k]], "score": round(float(scores[k]), 6)} for k in drivers
        ],
        "skipped_files": len(series.skipped),
        "blank_slices": blank,
    }
    if errors:
        study["unreadable_slices"] = sorted(errors)
    if predictor.familiarity is not None:  # slices unlike the training images: their labels, the score's, mean little
        study["unfamiliar_slices"] = [i for i, c in zip(read, familiarity, strict=True) if not c["familiar"]]
    return StudyResult([lines[i] for i in range(len(ids))], study)
