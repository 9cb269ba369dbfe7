"""`lungct familiarity`: fit a run's familiarity reference on its own split (lungct.inference.familiarity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungct.data.splits import SplitItem, hold_out_groups, load_split
from lungct.errors import LungCTError
from lungct.inference import Predictor
from lungct.inference.familiarity import FAMILIARITY_FILE, PERCENTILE, fit_familiarity, unfamiliar_share
from lungct.run import ModelCard, RunDir

HELD_OUT = 0.15  # the share of groups that sets the threshold where the split has no validation part
SEED = 42


def familiarity_run(run_dir: str | Path, percentile: float = PERCENTILE, progress: bool = True) -> dict:
    """Reference from the training part, threshold from the validation part, the share of each part flagged; the
    reference is saved in the run, where predict, the API, the app and the DICOM node find it."""
    if not 50 <= percentile < 100:
        raise LungCTError(f"--percentile must be at least 50 and below 100, got {percentile:g}")
    run = RunDir(run_dir)
    card = run.card()  # first: a folder that is not a run is named as such, not by its missing split.csv
    parts, threshold_from = reference_parts(run, load_split(run.split), card)
    predictor = Predictor(run.path, familiarity=False)  # an old reference, stale or not, is replaced
    features = {part: predictor.features_paths_array(paths, progress) for part, paths in parts.items() if paths}
    reference = fit_familiarity(features["train"], features["val"], run.weights, percentile)
    reference.save(run.path)
    return {
        "file": str(run.path / FAMILIARITY_FILE),
        "percentile": percentile,
        "threshold_from": threshold_from,
        "n": {part: len(f) for part, f in features.items()},
        "flagged": {part: unfamiliar_share(reference.novelty(f)) for part, f in features.items()},
    }


def reference_parts(run: RunDir, items: list[SplitItem], card: ModelCard) -> tuple[dict[str, list[str]], str]:
    """The images that fit the reference ("train") and those that set its threshold ("val"), and what the latter are.

    The threshold must come from images the features never learnt from, or it sits below a new patient's distance.
    An ensemble of fine-tuned members has none outside its test part (every other image trained some member), so it
    is refused. Members that share one frozen backbone learnt nothing from any image: where such an ensemble's split
    has no validation part (`lungct ensemble` without --within), held-out groups of its images set the threshold.
    """
    if card.members and not card.shared_backbone:
        raise LungCTError(
            f"{run.path} is an ensemble of fine-tuned members: each image but the test part trained some member's "
            "backbone, so none is left to set an honest familiarity threshold; an ensemble of linear-probe folds "
            "(one shared frozen backbone) can be fitted"
        )
    parts = {part: [i.path for i in items if i.part == part] for part in ("train", "val", "test")}
    if parts["val"] or not card.shared_backbone:
        if not parts["train"] or not parts["val"]:
            raise LungCTError(f"{run.split} needs a training and a validation part to fit a familiarity reference")
        return parts, "the validation part"
    pool = [i for i in items if i.part == "train"]  # too few groups: hold_out_groups says so
    held = hold_out_groups(np.array([i.label for i in pool]), np.array([i.group for i in pool]), HELD_OUT, SEED)
    parts["train"] = [i.path for i, h in zip(pool, held, strict=True) if not h]
    parts["val"] = [i.path for i, h in zip(pool, held, strict=True) if h]
    return parts, f"{held.mean():.0%} of the images, whole groups held out (the members share one frozen backbone)"
