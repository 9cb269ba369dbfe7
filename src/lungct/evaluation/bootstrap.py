"""95% bootstrap confidence intervals for every scalar metric of metrics.json.

When groups (patients, look-alike slices) are known, whole groups are resampled: slices of one patient
are not independent, and resampling them one by one would give intervals that are too narrow.
Written here because scipy.stats.bootstrap resamples observations, not clusters, and would recompute the
metrics once per statistic instead of once per resample.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from lungct.evaluation.metrics import flat_metrics_of_resample

N_RESAMPLES = 1000


def _clusters(n: int, groups: Sequence[str] | None) -> list[np.ndarray]:
    """Index arrays of the units that are resampled: groups when known, else single items."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    keys = np.asarray(groups)
    return [np.flatnonzero(keys == g) for g in dict.fromkeys(keys.tolist())]


def paired_delta_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    groups: Sequence[str] | None = None,
    n_resamples: int = N_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Interval of a paired difference, e.g. ECE after minus before calibration on the same resampled images.

    `statistic(indices)` returns the difference on those indices. Resampling both sides together is what
    makes a small change on a small test set distinguishable from noise (or shows that it is not).
    """
    clusters = _clusters(n, groups)
    rng = np.random.default_rng(seed)
    values = np.array([statistic(_resample_indices(rng, clusters)) for _ in range(n_resamples)])
    values = values[~np.isnan(values)]  # resamples where the statistic is undefined (a class left out) drop out
    alpha = (1.0 - level) / 2.0
    if not len(values):
        return {"delta": float(statistic(np.arange(n))), "ci95": [float("nan")] * 2, "share_below_zero": float("nan")}
    return {
        "delta": float(statistic(np.arange(n))),
        "ci95": [float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))],
        "share_below_zero": float((values < 0).mean()),
    }


def _resample_indices(rng: np.random.Generator, clusters: list[np.ndarray]) -> np.ndarray:
    picked = rng.integers(0, len(clusters), len(clusters))
    return np.concatenate([clusters[i] for i in picked])


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    positive_class: str | None = None,
    groups: Sequence[str] | None = None,
    n_resamples: int = N_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[float] | None]:
    """metric -> [low, high] percentile interval; None where the metric was undefined in most resamples."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    clusters = _clusters(len(y_true), groups)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resamples that miss a class are expected; their metric is undefined
        for _ in range(n_resamples):
            idx = _resample_indices(rng, clusters)
            for key, value in flat_metrics_of_resample(y_true[idx], probs[idx], classes, positive_class).items():
                samples.setdefault(key, []).append(np.nan if value is None else float(value))
    alpha = (1.0 - level) / 2.0
    out: dict[str, list[float] | None] = {}
    for key, values in samples.items():
        v = np.asarray(values)
        v = v[~np.isnan(v)]
        if len(v) < n_resamples / 2:
            out[key] = None
            continue
        out[key] = [float(np.quantile(v, alpha)), float(np.quantile(v, 1.0 - alpha))]
    return out
