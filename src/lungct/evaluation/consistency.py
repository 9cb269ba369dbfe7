"""Is a measured ECE distinguishable from perfect calibration on a test part this small?

ECE is biased upwards on small samples: a perfectly calibrated model scored on 121 slices still shows gaps
between confidence and accuracy in every bin. Consistency resampling (Bröcker & Smith, Weather and
Forecasting 2007; the consistency bars of reliability diagrams) measures that floor: take the model's own
probabilities as the truth, draw labels from them many times, and score each draw with the same ECE. A
measured ECE inside that range cannot be told from perfect calibration; `p_value` is the share of draws at
least as bad as the measurement.

With groups, one label is drawn per group (from the group's mean probability) and shared by its slices, as
IQ-OTH/NCCD labels whole cases: the honest floor when a test part holds a few dozen correlated cases.

Written here: scikit-learn and netcal have no consistency resampling; it reuses lungct's own ECE binning.
"""

from __future__ import annotations

import numpy as np

DRAWS = 1000
BINS = 15  # as lungct.evaluation.metrics.reliability_bins


def ece_of_draws(y_draws: np.ndarray, probs: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Top-label ECE of each row of labels `y_draws` (draws x n) against one probability matrix (n x classes).

    Vectorised over draws: confidence, predicted class and bin depend only on `probs`; only correctness varies.
    Equal-width bins, each (lo, hi], exactly as `metrics.reliability_bins` bins them (tested).
    """
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    conf, pred = probs.max(1), probs.argmax(1)
    bin_of = np.searchsorted(np.linspace(0.0, 1.0, bins + 1), conf, side="left") - 1
    gap = (np.asarray(y_draws) == pred[None]).astype(np.float64) - conf[None]
    per_bin = np.stack([gap[:, bin_of == b].sum(1) for b in np.unique(bin_of)], axis=1)
    return np.abs(per_bin).sum(1) / probs.shape[0]


def ece_consistency(
    probs: np.ndarray,
    measured: float,
    groups: list[str] | np.ndarray | None = None,
    draws: int = DRAWS,
    seed: int = 0,
) -> dict:
    """The ECE range of a perfectly calibrated model with these probabilities, and where `measured` falls in it."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    if groups is None:
        draw_p, index, unit = probs, np.arange(len(probs)), "image"
    else:
        cases, index = np.unique(np.asarray(groups), return_inverse=True)
        draw_p = np.stack([probs[index == i].mean(0) for i in range(len(cases))])
        unit = f"group ({len(cases)} groups)"
    cumulative = draw_p.cumsum(1)
    cumulative[:, -1] = 1.0
    u = np.random.default_rng(seed).random((draws, len(draw_p)))
    y = (u[:, :, None] > cumulative[None]).sum(-1)[:, index]
    eces = ece_of_draws(y, probs)
    p5, median, p95 = np.percentile(eces, [5, 50, 95])
    return {
        "method": f"consistency resampling: {draws} label draws from the model's own probabilities, one per {unit}",
        "median": float(median),
        "p5": float(p5),
        "p95": float(p95),
        "p_value": float((eces >= measured).mean()),
    }
