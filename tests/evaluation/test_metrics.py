import numpy as np
import pytest

from lungct.evaluation.metrics import compute_metrics, expected_calibration_error


def test_metrics_match_hand_computed_values():
    # 3 classes; the confusion matrix is [[2,1,0],[0,3,0],[1,0,1]]
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 1, 0, 2])
    probs = np.full((8, 3), 0.1)
    probs[np.arange(8), pred] = 0.8
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    a = m["classes"]["a"]
    assert a["precision"] == pytest.approx(2 / 3)
    assert a["recall"] == pytest.approx(2 / 3)
    assert a["specificity"] == pytest.approx(4 / 5)  # of 5 non-a items, one was called a
    assert a["support"] == 3
    assert m["classes"]["b"]["specificity"] == pytest.approx(4 / 5)
    assert m["classes"]["c"]["specificity"] == pytest.approx(1.0)
    assert m["n"] == 8

    # AUC by its definition (Mann-Whitney: a positive scored above a negative, ties count half), one class
    # against the rest, averaged over classes: independent of scikit-learn, which compute_metrics uses
    def auc(k: int) -> float:
        pos, neg = probs[y == k, k], probs[y != k, k]
        return float(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]))

    assert m["macro_auc"] == pytest.approx(np.mean([auc(k) for k in range(3)]))
    assert m["classes"]["a"]["auc"] == pytest.approx(auc(0))
    # all predictions have confidence 0.8; 6/8 correct -> ECE = |0.75 - 0.8|
    assert m["ece"] == pytest.approx(0.05)


def test_binary_reports_positive_class_sensitivity_and_specificity():
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    m = compute_metrics(y, probs, ["benign", "malignant"], positive_class="malignant")
    assert m["positive_class"] == "malignant"
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)


def test_auc_is_none_for_a_class_missing_from_the_data():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["classes"]["c"]["auc"] is None
    assert m["classes"]["a"]["auc"] == pytest.approx(1.0)
    assert m["macro_auc"] == pytest.approx(1.0)


def test_ece_is_zero_when_confidence_equals_accuracy():
    y = np.array([0, 1, 0, 0])  # confidence 0.75 everywhere, 3 of 4 right
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(y, probs) == pytest.approx(0.0)
