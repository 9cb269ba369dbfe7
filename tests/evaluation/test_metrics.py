import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from lungct.evaluation.metrics import calibration_metrics, compute_metrics, expected_calibration_error


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


def test_data_of_one_class_is_scored_without_sklearns_warning(recwarn):
    """A screening set of normal slices only: balanced accuracy is that class's recall, and nothing warns."""
    y = np.array([2, 2, 2, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [0.1, 0.3, 0.6]])
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["balanced_accuracy"] == pytest.approx(0.75) and m["macro_auc"] is None
    assert [str(w.message) for w in recwarn] == []
    assert compute_metrics(y, np.tile([0.1, 0.1, 0.8], (4, 1)), ["a", "b", "c"])["balanced_accuracy"] == 1.0
    assert [str(w.message) for w in recwarn] == []  # every slice right: one label in truth and prediction alike


def test_ece_is_zero_when_confidence_equals_accuracy():
    y = np.array([0, 1, 0, 0])  # confidence 0.75 everywhere, 3 of 4 right
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(y, probs) == pytest.approx(0.0)


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_brier_and_nll_equal_scikit_learns(n_classes):
    rng = np.random.default_rng(n_classes)
    logits = rng.normal(scale=4.0, size=(200, n_classes))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, n_classes - 1, 200)  # the last class never occurs, as in a resample that misses it
    y[0], probs[0] = 0, np.eye(n_classes)[1]  # a confident miss: the NLL's clipping decides this row
    labels = list(range(n_classes))
    m = calibration_metrics(y, probs)
    assert m["brier"] == pytest.approx(brier_score_loss(y, probs, labels=labels), rel=1e-9)
    assert m["nll"] == pytest.approx(log_loss(y, np.clip(probs, 1e-12, 1.0), labels=labels), rel=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning")  # scikit-learn's, on resamples that miss a class: expected
@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_the_bootstraps_numpy_metrics_equal_compute_metrics(n_classes):
    """The bootstrap's numpy twin of compute_metrics gives every number of flat_metrics(compute_metrics(...)),
    on resamples that miss a class, predict none of one, tie scores, or hold one class only."""
    from lungct.contracts import flat_metrics
    from lungct.evaluation.metrics import flat_metrics_of_resample

    rng = np.random.default_rng(n_classes)
    classes = ["benign", "malignant", "normal", "other"][:n_classes]
    cases = []
    for trial in range(40):
        n = int(rng.integers(1, 30))
        probs = rng.dirichlet(np.ones(n_classes), n).round(1 if trial % 3 == 0 else 6)  # rounding makes ties
        probs[probs.sum(1) == 0] = 1.0 / n_classes
        probs /= probs.sum(1, keepdims=True)
        high = n_classes - (trial % 2)  # odd trials never draw the last class
        cases.append((rng.integers(0, max(high, 1), n), probs))
    cases.append((np.zeros(5, dtype=int), np.tile(np.eye(n_classes)[-1], (5, 1))))  # one class, none predicted
    for y, probs in cases:
        want = flat_metrics(compute_metrics(y, probs, classes, "malignant"))
        got = flat_metrics_of_resample(y, probs, classes, "malignant")
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert (got[key] is None) == (value is None), key
            if value is not None:
                assert got[key] == pytest.approx(value, abs=1e-12), key
