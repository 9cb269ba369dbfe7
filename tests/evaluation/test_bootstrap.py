"""Bootstrap intervals: they hold the point estimate, shrink with more data and widen when groups are resampled."""

from __future__ import annotations

import numpy as np

from lungct.evaluation.bootstrap import bootstrap_ci
from lungct.evaluation.metrics import compute_metrics

CLASSES = ["benign", "malignant", "normal"]


def noisy_predictions(n: int, seed: int = 0, correct: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    pred = np.where(rng.random(n) < correct, y, (y + rng.integers(1, 3, n)) % 3)
    probs = rng.dirichlet([1, 1, 1], n) * 0.4
    probs[np.arange(n), pred] += 0.6
    return y, probs


def test_intervals_contain_the_point_estimate():
    y, probs = noisy_predictions(150)
    point = compute_metrics(y, probs, CLASSES)
    ci = bootstrap_ci(y, probs, CLASSES, n_resamples=120)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc"):
        low, high = ci[key]
        assert low <= point[key] <= high, (key, low, point[key], high)
        assert high - low > 0.01
    low, high = ci["malignant.recall"]
    assert low <= point["classes"]["malignant"]["recall"] <= high


def test_intervals_shrink_with_more_data():
    small = bootstrap_ci(*noisy_predictions(60, seed=1), CLASSES, n_resamples=120)
    large = bootstrap_ci(*noisy_predictions(960, seed=1), CLASSES, n_resamples=120)
    for key in ("accuracy", "macro_auc"):
        assert large[key][1] - large[key][0] < 0.6 * (small[key][1] - small[key][0]), key


def test_resampling_groups_widens_intervals_for_correlated_slices():
    # 30 "patients" of 10 identical slices each: the effective sample size is 30, not 300.
    y0, p0 = noisy_predictions(30, seed=2)
    y, probs = np.repeat(y0, 10), np.repeat(p0, 10, axis=0)
    groups = np.repeat([f"p{i}" for i in range(30)], 10)
    by_image = bootstrap_ci(y, probs, CLASSES, n_resamples=120)
    by_group = bootstrap_ci(y, probs, CLASSES, groups=groups, n_resamples=120)
    width = lambda ci: ci["accuracy"][1] - ci["accuracy"][0]  # noqa: E731
    assert width(by_group) > 2 * width(by_image)


def test_undefined_metric_gives_none():
    y = np.zeros(20, dtype=int)
    probs = np.tile([0.8, 0.1, 0.1], (20, 1))
    ci = bootstrap_ci(y, probs, CLASSES, n_resamples=50)
    assert ci["benign.auc"] is None and ci["accuracy"] == [1.0, 1.0]


def test_paired_delta_interval_sees_a_real_improvement_and_not_a_null_one():
    from lungct.evaluation.bootstrap import paired_delta_ci

    rng = np.random.default_rng(0)
    before = rng.normal(1.0, 0.3, 200)
    improved = before - 0.2 + rng.normal(0, 0.05, 200)
    same = before + rng.normal(0, 0.05, 200)
    groups = [f"g{i // 4}" for i in range(200)]
    real = paired_delta_ci(lambda i: float(improved[i].mean() - before[i].mean()), 200, groups, n_resamples=300)
    null = paired_delta_ci(lambda i: float(same[i].mean() - before[i].mean()), 200, groups, n_resamples=300)
    assert real["ci95"][0] <= real["delta"] <= real["ci95"][1] < 0 and real["share_below_zero"] == 1.0
    assert null["ci95"][0] < 0 < null["ci95"][1]
