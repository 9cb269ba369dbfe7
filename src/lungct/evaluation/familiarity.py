"""`lungct familiarity`: fit a run's familiarity reference on its own split (lungct.inference.familiarity)."""

from __future__ import annotations

from pathlib import Path

from lungct.data.splits import load_split
from lungct.errors import LungCTError
from lungct.inference import Predictor
from lungct.inference.familiarity import FAMILIARITY_FILE, PERCENTILE, fit_familiarity, unfamiliar_share
from lungct.run import RunDir


def familiarity_run(run_dir: str | Path, percentile: float = PERCENTILE, progress: bool = True) -> dict:
    """Reference from the training part, threshold from the validation part, the share of each part flagged; the
    reference is saved in the run, where predict, the API, the app and the DICOM node find it."""
    if not 50 <= percentile < 100:
        raise LungCTError(f"--percentile must be at least 50 and below 100, got {percentile:g}")
    run = RunDir(run_dir)
    items = load_split(run.split)
    parts = {part: [i.path for i in items if i.part == part] for part in ("train", "val", "test")}
    if not parts["train"] or not parts["val"]:
        raise LungCTError(f"{run.split} needs a training and a validation part to fit a familiarity reference")
    predictor = Predictor(run.path, familiarity=False)  # an old reference, stale or not, is replaced
    features = {part: predictor.features_paths_array(paths, progress) for part, paths in parts.items() if paths}
    reference = fit_familiarity(features["train"], features["val"], run.weights, percentile)
    reference.save(run.path)
    return {
        "file": str(run.path / FAMILIARITY_FILE),
        "percentile": percentile,
        "n": {part: len(f) for part, f in features.items()},
        "flagged": {part: unfamiliar_share(reference.novelty(f)) for part, f in features.items()},
    }
