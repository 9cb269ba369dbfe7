"""Is an input like the images the model was trained on? A per-image answer, beside the label.

The model labels whatever it is given: a figure from an article, a screenshot, an inverted slice or noise gets a
confident class as a CT slice does. Its pooled backbone features (the prediction log's embedding) tell them apart:
the squared Mahalanobis distance to the training part's features, with scikit-learn's Ledoit-Wolf covariance (its
shrinkage makes 1280 features from about 600 slices invertible), against a threshold at a high percentile of the
validation part's distances. On the `make demo` run (benchmarks/familiarity_probe.py) it flagged 0% of the
held-out test patients' slices and 100% of inverted slices, slices shrunk onto a white page and noise, and 99.9% of
the pneumonia CT figures; slices turned by 90 degrees rank higher (AUROC 0.986) but only 10% pass the threshold.

`novelty` is the distance over the threshold: above 1 is unfamiliar. Fitting needs scikit-learn
(`lungct familiarity`); applying is numpy alone, so the torch-free server has it too.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lungct.errors import LungCTError
from lungct.files import atomic_write
from lungct.run import weights_digest

FAMILIARITY_FILE = "familiarity.npz"
PERCENTILE = 99.0


def is_familiar(novelty: float) -> bool:
    """The one rule every reader of a novelty applies: at or below the threshold is like the training images."""
    return novelty <= 1.0


def unfamiliar_share(novelty) -> float:
    """The share of novelties that are not familiar (`is_familiar`)."""
    return float(np.mean([not is_familiar(n) for n in novelty]))


def weights_sha256(weights: Path) -> str:
    return weights_digest(weights).hexdigest()


@dataclass(frozen=True)
class Familiarity:
    mean: np.ndarray  # (features,)
    precision: np.ndarray  # (features, features): the inverse of the shrunk covariance
    threshold: float  # squared distance at `percentile` of the validation part
    percentile: float
    weights_sha256: str  # the weights the features came from: other weights make the reference meaningless

    def novelty(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance over the threshold, per row: above 1 is unfamiliar."""
        diff = np.asarray(features, dtype=np.float64) - self.mean
        return np.einsum("ij,jk,ik->i", diff, self.precision, diff) / self.threshold

    def context(self, features: np.ndarray) -> list[dict]:
        """Each row's Prediction fields: `familiar` and `novelty`."""
        return [{"familiar": bool(is_familiar(n)), "novelty": round(float(n), 3)} for n in self.novelty(features)]

    def save(self, run_path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=self.mean,
            precision=self.precision.astype(np.float32),
            threshold=self.threshold,
            percentile=self.percentile,
            weights_sha256=self.weights_sha256,
        )
        atomic_write(run_path / FAMILIARITY_FILE, buffer.getvalue())


def load_familiarity(run_path: Path, weights: Path) -> Familiarity | None:
    """The run's reference, or None where `lungct familiarity` has not fitted one; a LungCTError when the file
    is damaged or was fitted on other weights (the run was retrained since)."""
    path = run_path / FAMILIARITY_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            found = Familiarity(
                mean=data["mean"].astype(np.float64),
                precision=data["precision"].astype(np.float64),
                threshold=float(data["threshold"]),
                percentile=float(data["percentile"]),
                weights_sha256=str(data["weights_sha256"]),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise LungCTError(f"{path} is damaged ({type(exc).__name__}); fit it again with lungct familiarity") from None
    if found.mean.ndim != 1 or found.precision.shape != (len(found.mean),) * 2 or not found.threshold > 0:
        raise LungCTError(f"{path} is damaged (inconsistent shapes); fit it again with lungct familiarity")
    if found.weights_sha256 != weights_sha256(weights):
        raise LungCTError(
            f"{path} was fitted on other weights than {weights.name}; fit it again with lungct familiarity"
        )
    return found


def fit_familiarity(
    train_features: np.ndarray, val_features: np.ndarray, weights: Path, percentile: float = PERCENTILE
) -> Familiarity:
    """The training part's mean and Ledoit-Wolf precision; the threshold from the validation part, which the
    reference has not seen (the training part's own distances are smaller than a new patient's)."""
    from sklearn.covariance import LedoitWolf

    if len(train_features) < 2 or len(val_features) < 1:
        raise LungCTError("familiarity needs at least 2 training and 1 validation slice")
    estimate = LedoitWolf().fit(np.asarray(train_features, dtype=np.float64))
    unscaled = Familiarity(estimate.location_, estimate.precision_, 1.0, percentile, weights_sha256(weights))
    threshold = float(np.percentile(unscaled.novelty(val_features), percentile))  # threshold 1: the distances
    if not threshold > 0:
        raise LungCTError("the validation slices all sit on the training mean; no threshold can be drawn")
    return replace(unscaled, threshold=threshold)
