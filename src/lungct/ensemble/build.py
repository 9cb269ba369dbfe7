"""Build an ensemble run directory from the finished folds of a `lungct cv` folder.

The result is an ordinary run: model.json (with `members`), one model.safetensors holding every member,
config.yaml, split.csv and summary.json, so evaluate, predict, export, serve, app and explain take it as is.

Honest evaluation: every image of the cv pool trained some member. With `lungct cv --within RUN` the pool
is RUN's development images only, so the ensemble inherits RUN's split and its untouched test part. Without
`--within` there is nothing left to test on: the split marks every image as training data, and evaluate
then asks for --data; the cv figures themselves are the honest estimate of the recipe.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from lungct.contracts import SplitPart
from lungct.data.splits import SplitItem, load_split, part_counts, save_split
from lungct.errors import LungCTError
from lungct.files import output_folder
from lungct.models.ensemble import from_members
from lungct.run import RunDir, load_model, save_weights, write_json

log = logging.getLogger("lungct")

# What every member must share for their probabilities to be averaged over the same input.
MUST_MATCH = ("arch", "classes", "preprocess", "global_pool", "tiles")


def finished_folds(cv_dir: Path) -> tuple[dict, list[RunDir]]:
    if (cv_dir / "model.json").is_file():  # an ensemble run keeps its folds' cv.json, but not the folds
        raise LungCTError(f"{cv_dir} is a run, not a `lungct cv` folder; give --cv the folder `lungct cv --out` wrote")
    summary = cv_dir / "cv.json"
    if not summary.is_file():
        raise LungCTError(f"{cv_dir} is not a finished `lungct cv` folder: cv.json is missing")
    try:
        info = json.loads(summary.read_text(encoding="utf-8"))
        folds = int(info["folds"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LungCTError(f"{summary} is damaged: {exc}") from exc
    runs = [RunDir(cv_dir / f"fold_{k}") for k in range(1, folds + 1)]
    for run in runs:
        if not run.read_summary().complete:
            raise LungCTError(f"{run.path} is not a finished fold; run the same `lungct cv` command again")
        run.require_model()
    return info, runs


def build_ensemble(cv_dir: str | Path, out: str | Path, overwrite: bool = False) -> RunDir:
    """Write the ensemble of `cv_dir`'s fold models into `out` and return it."""
    cv_dir, target = Path(cv_dir), RunDir(out)
    cv_at, out_at = cv_dir.resolve(), target.path.resolve()
    if out_at == cv_at or cv_at in out_at.parents or out_at in cv_at.parents:
        # --overwrite cleared --out first: the cv folder, or a fold, was deleted before its models were read
        raise LungCTError(f"--out {target.path} is, holds or lies inside the cv folder {cv_dir}; write elsewhere")
    info, runs = finished_folds(cv_dir)
    if target.path.exists() and not target.path.is_dir():
        raise LungCTError(f"--out {target.path} exists and is not a folder")
    if target.path.exists() and any(target.path.iterdir()):
        if not overwrite:
            raise LungCTError(f"{target.path} is not empty; use --overwrite or another --out")
        shutil.rmtree(target.path)
    cards = [run.card() for run in runs]
    for key in MUST_MATCH:
        values = {json.dumps(getattr(c, key).to_dict() if key == "preprocess" else getattr(c, key)) for c in cards}
        if len(values) > 1:
            raise LungCTError(f"the folds of {cv_dir} differ in {key}; they cannot be averaged")
    if any(c.members for c in cards):
        raise LungCTError(f"{cv_dir} holds ensembles as folds; nesting ensembles is not supported")
    model = from_members([load_model(run)[0] for run in runs])
    output_folder(target.path, "--out")
    card = replace(cards[0], members=len(runs), shared_backbone=model.shared_backbone)
    save_weights(model, target.weights)
    write_json(target.model_json, card.to_dict())
    shutil.copyfile(runs[0].config, target.config)
    items = _split(info, runs)
    save_split(items, target.split)
    write_json(
        target.summary,
        {
            "status": "complete",
            "name": f"ensemble of {cv_dir.name}",
            "arch": card.arch,
            "pretrained": card.pretrained,
            "weights": card.weights_source,
            "ensemble": {
                "cv": str(cv_dir.resolve()),
                "members": len(runs),
                "shared_backbone": model.shared_backbone,
                "within_run": info.get("within_run"),
                "cv_summary": info.get("summary"),
            },
            "counts": part_counts(items),
            "skipped": [],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    for name in ("cv.md", "cv.json"):
        shutil.copyfile(cv_dir / name, target.path / name)
    log.info("ensemble of %d folds written to %s (shared backbone: %s)", len(runs), target.path, model.shared_backbone)
    return target


def _split(info: dict, runs: list[RunDir]) -> list[SplitItem]:
    """The within-run's split (its test part untouched by every member), else every pooled image as training."""
    within = info.get("within_run")
    if within:
        return load_split(RunDir(within).split)
    seen: dict[str, SplitItem] = {}
    for run in runs:
        for item in load_split(run.split):
            seen.setdefault(item.path, replace(item, part=SplitPart.train.value))
    return list(seen.values())
