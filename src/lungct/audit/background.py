"""Background check: does the label show in the pixels outside the body, where no disease can be?

Air, the scanner table and the slice's border carry no anatomy, but they carry the acquisition: the scanner, its
table, its noise and its reconstruction. When a model that sees only those pixels predicts the label of patients it
never saw, the classes differ in how they were scanned, and any model trained on the whole slice can score on that
instead of on the disease (on IQ-OTH/NCCD it does: docs/model-quality.md, "Body-only pooling and hand-made texture").

The features are texture statistics of the outside pixels (uniform local binary pattern histograms at three radii
and a grey-level histogram, scikit-image), the model scikit-learn's class-balanced logistic regression, and the
score its balanced accuracy over stratified group folds, so no look-alike group is scored by a model that saw it.
"""

from __future__ import annotations

import logging

import numpy as np

from lungct.data.field import body_hull
from lungct.data.images import ImageReadError, load_image
from lungct.data.splits import stratified_group_folds
from lungct.errors import LungCTError

log = logging.getLogger("lungct")

LBP_RADII = (1, 2, 3)
FOLDS = 5
FLAG_MARGIN = 0.15  # flagged when balanced accuracy beats chance (1 / classes) by this much on unseen groups


def lbp_and_histogram(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Uniform LBP histograms (8 neighbours at each radius) and a 16-bin grey histogram of the pixels in `mask`."""
    from skimage.feature import local_binary_pattern

    feats = []
    for r in LBP_RADII:
        codes = local_binary_pattern(grey, 8, r, "uniform")[mask]
        feats.append(np.bincount(codes.astype(int), minlength=10)[:10] / max(1, len(codes)))
    feats.append(np.histogram(grey[mask], bins=16, range=(0, 256))[0] / max(1, mask.sum()))
    return np.concatenate(feats).astype(np.float32)


def background_features(img) -> np.ndarray:
    """The texture statistics of a slice's pixels outside the body's hull."""
    return lbp_and_histogram(np.asarray(img.convert("L")), ~body_hull(img))


def background_check(
    paths: list[str], labels: list[str], groups: list[str], seed: int = 0, hu_offset: int | None = None
) -> dict:
    """Balanced accuracy of predicting the label from outside the body alone, over group folds, against chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = sorted(set(labels))
    if len(classes) < 2:
        return {"ran": False, "reason": "fewer than two classes"}
    chance = 1 / len(classes)
    x, y, g = [], [], []
    for path, label, group in zip(paths, labels, groups, strict=True):
        try:
            x.append(background_features(load_image(path, "grey", hu_offset=hu_offset)))
        except ImageReadError as exc:  # the scan read it a moment ago; a file changed meanwhile is left out
            log.warning("background check: %s", exc)
            continue
        y.append(classes.index(label))
        g.append(group)
    y_arr, g_arr = np.array(y), np.array(g)
    try:
        folds = list(stratified_group_folds(y_arr, g_arr, FOLDS, seed, "the background check"))
    except LungCTError as exc:
        return {"ran": False, "reason": str(exc)}
    pred = np.empty(len(y_arr), dtype=int)
    features = np.stack(x)
    for train, test in folds:
        model = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
        pred[test] = model.fit(features[train], y_arr[train]).predict(features[test])
    score = float(balanced_accuracy_score(y_arr, pred))
    return {
        "ran": True,
        "balanced_accuracy": round(score, 4),
        "chance": round(chance, 4),
        "flagged": score >= chance + FLAG_MARGIN,
        "recall": {c: round(float((pred[y_arr == k] == k).mean()), 4) for k, c in enumerate(classes)},
        "folds": FOLDS,
        "n_images": len(y_arr),
    }
