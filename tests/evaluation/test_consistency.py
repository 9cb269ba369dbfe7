"""ECE consistency resampling: the same ECE as metrics.py, a floor that shrinks with n, and a test that can reject."""

from __future__ import annotations

import numpy as np

from lungct.evaluation.consistency import ece_consistency, ece_of_draws
from lungct.evaluation.metrics import expected_calibration_error


def _probs(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet([0.6, 0.6, 0.6], size=n)


def test_vectorised_ece_equals_the_reported_ece_for_every_draw():
    probs = _probs(200)
    probs[:3] = [[1 / 3, 1 / 3, 1 / 3], [0.6, 0.2, 0.2], [0.2, 0.2, 0.6]]  # confidences on bin edges
    draws = np.random.default_rng(2).integers(0, 3, size=(50, 200))
    expected = [expected_calibration_error(y, probs) for y in draws]
    np.testing.assert_allclose(ece_of_draws(draws, probs), expected, atol=1e-12)


def test_the_floor_of_a_calibrated_model_shrinks_as_the_test_part_grows():
    small = ece_consistency(_probs(100), measured=0.0)
    large = ece_consistency(_probs(10_000), measured=0.0)
    assert large["p95"] < 0.02 < small["median"]
    assert small["p5"] < small["median"] < small["p95"]


def test_labels_drawn_from_the_probabilities_are_consistent_and_wrong_labels_are_rejected():
    probs = _probs(300)
    rng = np.random.default_rng(3)
    honest = np.array([rng.choice(3, p=p) for p in probs])
    wrong = (probs.argmax(1) + 1) % 3  # every confident prediction wrong
    ok = ece_consistency(probs, expected_calibration_error(honest, probs))
    bad = ece_consistency(probs, expected_calibration_error(wrong, probs))
    assert ok["p_value"] > 0.05
    assert bad["p_value"] == 0.0


def test_shared_case_labels_raise_the_floor():
    probs = np.repeat(_probs(20), 8, axis=0)  # 20 cases of 8 look-alike slices
    groups = np.repeat([f"case{i}" for i in range(20)], 8)
    by_slice = ece_consistency(probs, 0.1)
    by_case = ece_consistency(probs, 0.1, groups)
    assert by_case["median"] > by_slice["median"]
    assert "20 groups" in by_case["method"]


def test_groups_of_one_slice_are_exactly_independent_slices():
    probs = _probs(150)
    alone = ece_consistency(probs, 0.1, groups=[f"g{i:03d}" for i in range(150)])
    independent = ece_consistency(probs, 0.1)
    assert {k: alone[k] for k in ("median", "p5", "p95", "p_value")} == {
        k: independent[k] for k in ("median", "p5", "p95", "p_value")
    }
