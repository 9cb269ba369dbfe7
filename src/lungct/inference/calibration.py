"""Calibration: make a predicted 0.9 mean "right nine times in ten", fitted on the run's validation part.

Temperature scaling divides the logits by one number T (Guo et al., 2017): it keeps every prediction's
ranking and argmax and only tempers the confidence. Isotonic regression (scikit-learn, one class against
the rest, then renormalised) is the more flexible option for larger validation sets. The fitted
calibrator is saved as calibration.json in the run; lungct.inference.Predictor applies it, so predict,
evaluate and the API all report calibrated probabilities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import softmax

from lungct.contracts import CalibrationMethod
from lungct.errors import LungCTError

CALIBRATION_FILE = "calibration.json"
METHODS = tuple(CalibrationMethod)  # lungct.contracts.CalibrationMethod is the one list


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-12, 1.0))


@dataclass
class TemperatureScaling:
    """softmax(logits / T). Works from probabilities too: log-softmax differs from the logits by a constant."""

    temperature: float

    def apply(self, probs: np.ndarray) -> np.ndarray:
        return softmax(_log(np.asarray(probs, dtype=np.float64)) / self.temperature, axis=1)

    def to_dict(self) -> dict:
        return {"method": "temperature", "temperature": self.temperature}


@dataclass
class IsotonicCalibration:
    """Per-class isotonic maps (sklearn's fitted thresholds), applied by linear interpolation as sklearn does."""

    x: list[list[float]]
    y: list[list[float]]

    def apply(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float64)
        out = np.stack([np.interp(probs[:, k], self.x[k], self.y[k]) for k in range(probs.shape[1])], axis=1)
        total = out.sum(1, keepdims=True)
        return np.where(total > 0, out / np.where(total > 0, total, 1.0), 1.0 / probs.shape[1])

    def to_dict(self) -> dict:
        return {"method": "isotonic", "x": self.x, "y": self.y}


Calibrator = TemperatureScaling | IsotonicCalibration


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> TemperatureScaling:
    """The T in [0.05, 20] that minimises the negative log-likelihood of y_true."""
    from scipy.optimize import minimize_scalar  # fitting only: applying a calibrator (serving) needs neither

    logp = _log(np.asarray(probs, dtype=np.float64))
    y_true = np.asarray(y_true)

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(-(z[np.arange(len(y_true)), y_true] - np.log(np.exp(z).sum(1))).mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return TemperatureScaling(float(np.exp(best.x)))


def fit_isotonic(y_true: np.ndarray, probs: np.ndarray) -> IsotonicCalibration:
    from sklearn.isotonic import IsotonicRegression  # fitting only: the torch-free server has no scikit-learn

    xs, ys = [], []
    for k in range(probs.shape[1]):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probs[:, k], y_true == k)
        xs.append(iso.X_thresholds_.tolist())
        ys.append(iso.y_thresholds_.tolist())
    return IsotonicCalibration(xs, ys)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise LungCTError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")


def fit_calibrator(y_true: np.ndarray, probs: np.ndarray, method: str = "temperature") -> Calibrator:
    check_method(method)
    if len(y_true) < 2:
        raise LungCTError("calibration needs at least two validation images")
    return fit_temperature(y_true, probs) if method == "temperature" else fit_isotonic(y_true, probs)


def calibrator_from_dict(d: dict) -> Calibrator:
    """calibration.json's calibrator; TypeError or ValueError when it is not one."""
    if not isinstance(d, dict):
        raise TypeError(f"expected a JSON object, got {type(d).__name__}")
    if d.get("method") == "temperature":
        temperature = float(d["temperature"])
        if not 0 < temperature < float("inf"):  # T <= 0 would reverse the classes' order; NaN fails this too
            raise ValueError(f"temperature {temperature} is not a positive number")
        return TemperatureScaling(temperature)
    if d.get("method") == "isotonic":
        x, y = d["x"], d["y"]
        if not (isinstance(x, list) and isinstance(y, list) and len(x) == len(y)):
            raise ValueError("isotonic x and y must be lists with one map per class")
        maps = [([float(v) for v in xs], [float(v) for v in ys]) for xs, ys in zip(x, y, strict=True)]
        if any(len(xs) != len(ys) or not xs for xs, ys in maps):
            raise ValueError("each class's isotonic map needs as many x as y values, at least one")
        return IsotonicCalibration([xs for xs, _ in maps], [ys for _, ys in maps])
    raise LungCTError(f"unknown calibration method {d.get('method')!r} in {CALIBRATION_FILE}")


def load_calibration(run_dir: str | Path, n_classes: int | None = None) -> Calibrator | None:
    """The run's saved calibrator, or None when the run was never calibrated; with `n_classes`, an isotonic
    calibrator must have one map per class."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        calibrator = calibrator_from_dict(json.loads(path.read_text(encoding="utf-8")))
        if n_classes is not None and isinstance(calibrator, IsotonicCalibration) and len(calibrator.x) != n_classes:
            raise ValueError(f"{len(calibrator.x)} isotonic maps for the model's {n_classes} classes")
        return calibrator
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LungCTError(f"{path} is damaged: {exc}") from exc
