"""The drift reference: what the model's inputs and outputs looked like on the data it was built from.

Computed from the run's split exactly as the prediction log is filled: intensity statistics of the decoded
slice (predlog.image_stats), the model's pooled backbone features (the head's input)
and the served probabilities (Predictor, calibration included), with each image's part and group.
Two parts, for two kinds of quantity:

- inputs (intensity, embeddings): the training part, the data the model learned from;
- predictions (confidence, class mix): the held-out validation (and calibration) part. The model was fitted
  to its training images, so it is more confident on them than on any new image (on IQ-OTH/NCCD: median
  confidence 0.94 on training images, 0.81 on unseen ones): a training-part reference would call every
  deployment drifted.

The test part is never used. Cached in RUN/drift_reference.npz; recomputed when the model version changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from lungct.contracts import SplitPart
from lungct.data.images import ImageReadError
from lungct.data.splits import SplitItem, load_split
from lungct.data.transforms import prepare_image
from lungct.errors import LungCTError
from lungct.inference import Predictor
from lungct.monitoring.predlog import image_stats
from lungct.run import RunDir, model_version

log = logging.getLogger("lungct")

REFERENCE_FILE = "drift_reference.npz"
STAT_KEYS = ("mean", "std", "p5", "p50", "p95", "width", "height")
INPUT_PARTS = (SplitPart.train,)  # intensity and embedding reference
# A fold ensemble built without --within has no val or calib part: every image trained some member. Its own cv
# folder's out-of-fold predictions (each image as the member that did not train on it scored it) stand in for them.
OUT_OF_FOLD = "out-of-fold"
PREDICTION_PARTS = (
    SplitPart.val,
    SplitPart.calib,
    OUT_OF_FOLD,
)  # confidence and class-mix reference: images the model was not fitted on


@dataclass
class Observations:
    """Per image: intensity statistics (n x 7, STAT_KEYS order), embeddings (n x d), probabilities (n x classes).

    A reference also has each image's split part and group; logged rows have neither (empty arrays).
    """

    stats: np.ndarray
    embeddings: np.ndarray
    probabilities: np.ndarray
    classes: list[str]
    model_version: str = ""
    parts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))

    def __len__(self) -> int:
        return len(self.stats)

    def take(self, index: np.ndarray) -> Observations:
        """The images at `index` (a boolean mask or positions, repeats allowed)."""
        return Observations(
            self.stats[index],
            self.embeddings[index],
            self.probabilities[index],
            self.classes,
            self.model_version,
            self.parts[index],
            self.groups[index],
        )

    def select(self, parts: Sequence[str]) -> Observations:
        """The reference's images of the given parts."""
        return self.take(np.isin(self.parts, list(parts)))

    def predicted_shares(self) -> np.ndarray:
        return np.bincount(self.probabilities.argmax(1), minlength=len(self.classes)) / max(len(self.probabilities), 1)


def describe_images(predictor: Predictor, images: Iterable[Image.Image], batch_size: int = 32) -> Observations:
    """Statistics, embeddings and probabilities of decoded slices, as the server logs them."""
    stats, embeddings, probs = [], [], []
    batch: list[Image.Image] = []

    def flush() -> None:
        tensors = torch.stack([prepare_image(img, predictor.card.preprocess) for img in batch])
        with torch.inference_mode():
            embeddings.append(predictor.model.forward_with_features(tensors)[1].float().numpy())
        probs.append(predictor.probabilities(tensors))
        stats.extend([image_stats(img)[k] for k in STAT_KEYS] for img in batch)
        batch.clear()

    for img in images:
        batch.append(img)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    n_classes = len(predictor.classes)
    return Observations(
        np.asarray(stats, dtype=np.float64).reshape(-1, len(STAT_KEYS)),
        np.concatenate(embeddings) if embeddings else np.zeros((0, 0), dtype=np.float32),
        np.concatenate(probs) if probs else np.zeros((0, n_classes)),
        list(predictor.classes),
    )


def _readable(predictor: Predictor, items: Sequence[SplitItem], kept: list[SplitItem], progress: bool):
    for item in tqdm(items, desc="drift reference", disable=not progress, leave=False):
        try:
            img = predictor.card.preprocess.load(item.path)
        except ImageReadError as exc:
            log.warning("drift reference: skipped %s: %s", item.path, exc.reason)
            continue
        kept.append(item)
        yield img


def build_reference(run_dir: str | Path, progress: bool = True) -> Observations:
    run = RunDir(run_dir)
    run.require_model()
    items = [i for i in load_split(run.split) if i.part in INPUT_PARTS + PREDICTION_PARTS]
    oof = None if any(i.part in PREDICTION_PARTS for i in items) else ensemble_out_of_fold(run)
    if not any(i.part in INPUT_PARTS for i in items):
        raise LungCTError(f"{run.split} has no {' or '.join(INPUT_PARTS)} part to build a drift reference from")
    if oof is None and not any(i.part in PREDICTION_PARTS for i in items):
        raise LungCTError(f"{run.split} has no val or calib part to build a drift reference from")
    predictor = Predictor(run.path)
    kept: list[SplitItem] = []
    obs = describe_images(predictor, _readable(predictor, items, kept, progress))
    if not len(obs):
        raise LungCTError(f"none of the {len(items)} reference images of {run.path} could be read")
    obs.model_version = model_version(run)
    obs.parts = np.array([i.part for i in kept])
    obs.groups = np.array([i.group for i in kept])
    return obs if oof is None else with_out_of_fold(obs, [i.path for i in kept], oof, predictor)


def ensemble_out_of_fold(run: RunDir):
    """The out-of-fold predictions of the cv folder a fold ensemble was built from, or None (not an ensemble, or
    its cv folder is gone or of other classes)."""
    from lungct.evaluation.oof import load_oof

    cv = run.ensemble_source()
    if not cv:
        return None
    try:
        oof = load_oof(cv)
    except LungCTError as exc:
        log.warning("drift reference: the ensemble's cv folder cannot stand in for a validation part: %s", exc)
        return None
    return oof if oof.classes == run.card().classes else None


def with_out_of_fold(obs: Observations, paths: list[str], oof, predictor: Predictor) -> Observations:
    """`obs` plus, for each of its images that has an out-of-fold prediction, that prediction (calibrated as the
    run's are) as an OUT_OF_FOLD row: the confidence and class-mix reference of an ensemble without a val part."""
    where = {p: k for k, p in enumerate(oof.paths)}
    rows = [n for n, p in enumerate(paths) if p in where]
    if not rows:
        raise LungCTError("none of the ensemble's images has an out-of-fold prediction in its cv folder")
    probs = oof.probs[[where[paths[n]] for n in rows]]
    if predictor.calibration is not None:
        probs = predictor.calibration.apply(probs)
    extra = obs.take(np.array(rows))
    return Observations(
        np.concatenate([obs.stats, extra.stats]),
        np.concatenate([obs.embeddings, extra.embeddings]),
        np.concatenate([obs.probabilities, np.asarray(probs, dtype=obs.probabilities.dtype)]),
        obs.classes,
        obs.model_version,
        np.concatenate([obs.parts, np.full(len(rows), OUT_OF_FOLD)]),
        np.concatenate([obs.groups, extra.groups]),
    )


def save_reference(obs: Observations, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")  # written whole, then renamed: never a half-written cache
    np.savez_compressed(
        tmp,
        stats=obs.stats,
        embeddings=obs.embeddings.astype(np.float32),
        probabilities=obs.probabilities,
        classes=np.asarray(obs.classes),
        model_version=np.asarray(obs.model_version),
        parts=obs.parts,
        groups=obs.groups,
    )
    os.replace(tmp, path)


def read_reference(path: Path) -> Observations:
    with np.load(path, allow_pickle=False) as z:
        return Observations(
            z["stats"],
            z["embeddings"],
            z["probabilities"],
            [str(c) for c in z["classes"]],
            str(z["model_version"]),
            z["parts"],
            z["groups"],
        )


def load_reference(run_dir: str | Path, progress: bool = True, refresh: bool = False) -> Observations:
    """The cached reference of the run, rebuilt when missing, stale (another model version) or `refresh`."""
    run = RunDir(run_dir)
    run.require_model()
    cache = run.path / REFERENCE_FILE
    version = model_version(run)
    if cache.is_file() and not refresh:
        try:
            obs = read_reference(cache)
            if obs.model_version == version:
                return obs
            log.info("drift reference: model version changed (%s -> %s); recomputing", obs.model_version, version)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("drift reference: %s unreadable (%s); recomputing", cache, exc)
    log.info("drift reference: describing the training and validation parts of %s", run.path)
    obs = build_reference(run.path, progress)
    try:
        save_reference(obs, cache)
    except OSError as exc:  # a read-only run directory still gets a report, just without the cache
        log.warning("drift reference: cannot cache it in %s (%s)", cache, exc)
    return obs
