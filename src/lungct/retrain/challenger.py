"""`lungct retrain`: a challenger trained with the champion's config on the champion's data plus feedback, and
the decision whether it may replace the champion.

- The champion's split is kept as it is: its test part stays test, so the challenger never trains on an image
  the champion was tested on. Feedback (lungct.monitoring.feedback's manifest, one group per upload) is split
  like any other data, by group, with the config's fractions and seed.
- Champion and challenger predict the same test images: the champion's test part plus the held-out feedback
  groups, and lungct.evaluation.paired compares them (challenger minus champion, paired group bootstrap).
- lungct.retrain.gate decides (non-inferior on all of them and on the champion's test part alone, better on
  one); RUN2/promotion.json records the decision with every figure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungct.config import ExperimentConfig, load_config
from lungct.contracts import SplitPart
from lungct.data.sources import read_manifest
from lungct.data.splits import SplitItem, load_split, make_split
from lungct.errors import LungCTError
from lungct.evaluation.bootstrap import N_RESAMPLES
from lungct.evaluation.paired import paired_comparison
from lungct.inference import Predictor
from lungct.retrain.gate import DEFAULT_MARGIN, decide
from lungct.run import RunDir, model_version, write_json
from lungct.training import train

PROMOTION_FILE = "promotion.json"


def feedback_items(manifest: Path, classes: list[str], val: float, test: float, seed: int) -> list[SplitItem]:
    """The feedback manifest's images, split by group; labels must be the champion's classes."""
    path = manifest / "manifest.csv" if manifest.is_dir() else manifest
    if not path.is_file():
        raise LungCTError(f"no feedback manifest at {path} (lungct feedback export writes DIR/manifest.csv)")
    samples = read_manifest(path, {})
    # checked here, as `train --split-file` does: a missing image would otherwise end training mid-epoch
    missing = [s.path for s in samples if not Path(s.path).is_file()]
    if missing:
        raise LungCTError(f"{path}: {len(missing)} listed images do not exist, e.g. {missing[0]}")
    unknown = sorted({s.label for s in samples} - set(classes))
    if unknown:
        raise LungCTError(f"feedback labels {unknown} are not the champion's classes {classes}")
    groups = [s.group or s.path for s in samples]
    parts = make_split([s.label for s in samples], groups, val, test, seed)
    return [SplitItem(s.path, s.label, g, p) for s, g, p in zip(samples, groups, parts, strict=True)]


@dataclass(frozen=True)
class RetrainInputs:
    """What `retrain` reads before it trains: checked up front, so that a wrong --champion or --feedback fails
    before a tracked run or a challenger folder exists."""

    champion: RunDir
    config: ExperimentConfig
    classes: list[str]
    base: list[SplitItem]
    extra: list[SplitItem]


def retrain_inputs(champion: str | Path, feedback: str | Path) -> RetrainInputs:
    champ = RunDir(champion)
    champ.require_model()
    cfg = load_config(champ.path / "config.yaml")
    classes = list(champ.card().classes)
    base = load_split(champ.split)
    extra = feedback_items(Path(feedback), classes, cfg.split.val_fraction, cfg.split.test_fraction, cfg.seed)
    return RetrainInputs(champ, cfg, classes, base, extra)


def retrain(
    inputs: RetrainInputs,
    out: str | Path,
    margin: float = DEFAULT_MARGIN,
    n_resamples: int = N_RESAMPLES,
    progress: bool = False,
) -> dict:
    """Train the challenger into `out`, compare it with the champion, write and return promotion.json."""
    champ, cfg, classes, base, extra = inputs.champion, inputs.config, inputs.classes, inputs.base, inputs.extra
    challenger = train(cfg, out, progress=progress, items=base + extra)

    own_test = [i for i in base if i.part == SplitPart.test]  # the champion's own test part: curated labels
    feedback_test = [i for i in extra if i.part == SplitPart.test]
    test = own_test + feedback_test
    paths = [i.path for i in test]
    y = np.array([classes.index(i.label) for i in test])
    champion_probs = Predictor(champ.path).predict_paths_array(paths)
    challenger_probs = Predictor(challenger.path).predict_paths_array(paths)
    positive = champ.card().positive_class
    positive_index = classes.index(positive) if positive in classes else None
    groups = [i.group for i in test]
    names = ("champion", "challenger")
    comparison = paired_comparison(y, champion_probs, challenger_probs, groups, positive_index, names, n_resamples)
    own = slice(0, len(own_test))
    trusted = paired_comparison(
        y[own], champion_probs[own], challenger_probs[own], groups[own], positive_index, names, n_resamples
    )
    decision = decide(comparison, margin, trusted=trusted)
    result = {
        "champion": {"run": str(champ.path), "model_version": model_version(champ)},
        "challenger": {"run": str(challenger.path), "model_version": model_version(challenger)},
        "test_images": {
            "champion_test_part": len(own_test),
            "held_out_feedback": len(feedback_test),
        },
        "feedback": {p: sum(1 for i in extra if i.part == p) for p in ("train", "val", "test")},
        "margin": margin,
        "positive_class": positive,
        **decision.to_dict(),
        "comparison": comparison,
        "comparison_champion_test_part": trusted,
    }
    write_json(challenger.path / PROMOTION_FILE, json.loads(json.dumps(result, default=float)))
    return result
