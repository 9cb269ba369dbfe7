"""Two models on the same images: label agreement and metric changes with paired group-bootstrap intervals.

What decides whether a derived model may replace the one it came from: INT8 against float (lungct.export.quantize)
and a retrained challenger against the champion (lungct.retrain). Both models' predictions of the same images are
resampled together, whole groups at a time (lungct.evaluation.bootstrap.paired_delta_ci), so the interval is of
the *difference*, which is far narrower than the two models' own intervals on a small test part.
"""

from __future__ import annotations

import numpy as np

from lungct.evaluation.bootstrap import N_RESAMPLES, paired_delta_ci


def label_scores(y: np.ndarray, pred: np.ndarray, n_classes: int, positive: int | None) -> dict[str, float]:
    """accuracy, balanced accuracy and positive-class recall from label counts. Written with numpy rather than
    scikit-learn because the bootstrap calls it thousands of times and sklearn's input checks dominate."""
    counts = np.bincount(y, minlength=n_classes)
    hits = np.bincount(y[pred == y], minlength=n_classes)
    present = counts > 0
    out = {"accuracy": float((pred == y).mean()), "balanced_accuracy": float((hits[present] / counts[present]).mean())}
    if positive is not None:
        out["positive_recall"] = float(hits[positive] / counts[positive]) if counts[positive] else float("nan")
    return out


def paired_comparison(
    y: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    groups: list[str],
    positive: int | None,
    names: tuple[str, str] = ("a", "b"),
    n_resamples: int = N_RESAMPLES,
) -> dict:
    """Agreement, and each metric of both models with the change (b minus a) and its paired 95% interval."""
    n_classes = probs_a.shape[1]
    pa, pb = probs_a.argmax(1), probs_b.argmax(1)
    a_scores, b_scores = label_scores(y, pa, n_classes, positive), label_scores(y, pb, n_classes, positive)
    metrics = {}
    for key in a_scores:

        def delta(idx: np.ndarray, key: str = key) -> float:
            with np.errstate(invalid="ignore"):
                after = label_scores(y[idx], pb[idx], n_classes, positive)[key]
                return after - label_scores(y[idx], pa[idx], n_classes, positive)[key]

        change = paired_delta_ci(delta, len(y), groups, n_resamples=n_resamples)
        metrics[key] = {names[0]: a_scores[key], names[1]: b_scores[key], "change": change["delta"]}
        metrics[key]["ci95"] = change["ci95"]
    return {
        "n": len(y),
        "n_groups": len(set(groups)),
        "label_agreement": float((pa == pb).mean()),
        "max_probability_difference": float(np.abs(probs_a - probs_b).max()),
        "metrics": metrics,
    }
