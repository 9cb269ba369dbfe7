"""Prediction from a run directory: files or folders in, one result per file out.

The Predictor is what the CLI, evaluation (and later the API and app) share, so they cannot diverge.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lungct.data.dataset import CTImageDataset
from lungct.data.images import ImageReadError, is_image_file
from lungct.data.sources import natural_key
from lungct.data.transforms import eval_transform, prepare_image
from lungct.evaluation.calibration import load_calibration
from lungct.run import RunDir, load_model


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Folders become the image files under them (natural order); files are kept even if not images."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(
                (f for f in p.rglob("*") if f.is_file() and is_image_file(f)), key=lambda f: natural_key(str(f))
            )
        else:
            out.append(p)
    return out


class Predictor:
    """Calibrated probabilities from a run. `tta=True` averages each slice with its mirror image.

    Test-time augmentation uses only the horizontal flip: it is the one training augmentation that leaves a
    CT slice anatomically plausible at full strength (left/right lungs swap), and it doubles the cost.
    """

    def __init__(self, run_dir: str | Path, batch_size: int = 32, tta: bool = False):
        self.run = RunDir(run_dir)
        self.tta = tta
        self.model, self.card = load_model(self.run)
        self.classes = self.card.classes
        self.batch_size = batch_size
        # The run's calibration (lungct calibrate), or None: applied to every probability we hand out.
        self.calibration = load_calibration(self.run.path)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        probs = torch.softmax(self.model(batch), dim=1)
        if self.tta:
            probs = (probs + torch.softmax(self.model(torch.flip(batch, dims=[3])), dim=1)) / 2
        probs = probs.numpy()
        return probs if self.calibration is None else self.calibration.apply(probs).astype(probs.dtype)

    def predict_paths_array(self, paths: list[str], progress: bool = False) -> np.ndarray:
        """Probabilities for readable files (already checked), in order; used by evaluation."""
        ds = CTImageDataset(
            paths, [0] * len(paths), self.card.preprocess, eval_transform(self.card.preprocess), cache=False
        )
        loader = DataLoader(ds, batch_size=self.batch_size)
        chunks = [self.probabilities(x) for x, _ in tqdm(loader, desc="predicting", disable=not progress, leave=False)]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)))

    def result(self, path: str, probs: np.ndarray) -> dict:
        return {
            "path": path,
            "label": self.classes[int(probs.argmax())],
            "probabilities": {c: round(float(p), 6) for c, p in zip(self.classes, probs, strict=True)},
        }

    def predict(self, paths: Iterable[str | Path]) -> Iterator[dict]:
        """One dict per file, in order: a prediction, or `path` and `error` for a file that cannot be read."""
        batch: list[tuple[str, torch.Tensor]] = []
        for path in expand_paths(paths):
            try:
                tensor = prepare_image(self.card.preprocess.load(path), self.card.preprocess)
            except ImageReadError as exc:
                yield from self._flush(batch)
                batch = []
                yield {"path": str(path), "error": exc.reason}
                continue
            batch.append((str(path), tensor))
            if len(batch) == self.batch_size:
                yield from self._flush(batch)
                batch = []
        yield from self._flush(batch)

    def _flush(self, batch: list[tuple[str, torch.Tensor]]) -> Iterator[dict]:
        if not batch:
            return
        probs = self.probabilities(torch.stack([t for _, t in batch]))
        for (path, _), p in zip(batch, probs, strict=True):
            yield self.result(path, p)
