"""Is a measured ECE distinguishable from perfect calibration on a test part this small?

ECE is biased upwards on small samples: a perfectly calibrated model scored on 121 slices still shows gaps
between confidence and accuracy in every bin. Consistency resampling (Bröcker & Smith, Weather and
Forecasting 2007; the consistency bars of reliability diagrams) measures that floor: take the model's own
probabilities as the truth, draw labels from them many times, and score each draw with the same ECE. A
measured ECE inside that range cannot be told from perfect calibration; `p_value` is the share of draws at
least as bad as the measurement.

With groups, the slices of a group share one uniform random number, and each slice's label is that number
read through its own probabilities (a comonotone coupling): every slice keeps its own probabilities as the
truth, and slices of one case get the same label wherever their probabilities agree, as IQ-OTH/NCCD labels
whole cases. That is the honest floor when a test part holds a few dozen correlated cases.

Written here: scikit-learn and netcal have no consistency resampling; it reuses lungct's own ECE binning.
"""

from __future__ import annotations

import numpy as np

DRAWS = 1000
BINS = 15  # as lungct.evaluation.metrics.reliability_bins
CHUNK = 4_000_000  # label-draw cells (draws x images x classes) held at once: about 32 MB per array


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
        index, unit = np.arange(len(probs)), "image"
    else:
        cases, index = np.unique(np.asarray(groups), return_inverse=True)
        unit = f"group ({len(cases)} groups)"
    cumulative = probs.cumsum(1)
    cumulative[:, -1] = 1.0
    rng = np.random.default_rng(seed)
    block = max(1, CHUNK // (len(probs) * probs.shape[1]))  # draws per block: memory stays flat for 100k slices
    eces = np.concatenate(
        [
            ece_of_draws((rng.random((m, index.max() + 1))[:, index, None] > cumulative[None]).sum(-1), probs)
            for m in np.diff([*range(0, draws, block), draws])
        ]
    )
    p5, median, p95 = np.percentile(eces, [5, 50, 95])
    return {
        "method": f"consistency resampling: {draws} label draws from the model's own probabilities, "
        f"one random number per {unit}",
        "median": float(median),
        "p5": float(p5),
        "p95": float(p95),
        "p_value": float((eces >= measured).mean()),
    }
