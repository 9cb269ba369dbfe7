"""Evaluate a run on its own test part, or on any other labelled data, and write the report files."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from lungct.config import SourceConfig, load_config
from lungct.contracts import SplitPart
from lungct.data.scan import scan_samples
from lungct.data.sources import collect_samples
from lungct.data.splits import load_split
from lungct.distributed import current, map_shards
from lungct.errors import LungCTError
from lungct.evaluation.bootstrap import N_RESAMPLES, bootstrap_ci
from lungct.evaluation.consistency import ece_consistency
from lungct.evaluation.metrics import compute_metrics, text_report
from lungct.files import output_folder
from lungct.inference import Predictor
from lungct.plots import plot_confusion, plot_roc
from lungct.run import write_json

log = logging.getLogger("lungct")

SETTINGS_FILE = "evaluation.json"  # beside metrics.json: n_bootstrap, tta, data
TEST_PART = "test part of the run's split"  # metrics.json's "data" when the run's own test part was scored


def evaluation_items(predictor: Predictor, data: list[str] | None, progress: bool) -> tuple[list[str], list[str], list]:
    """(paths, labels, skipped) of the run's test part, or of the given data roots or manifests."""
    run = predictor.run
    if not data:
        items = [i for i in load_split(run.split) if i.part == SplitPart.test]
        if not items:
            raise LungCTError(f"{run.split} has no test part; pass --data to evaluate on other data")
        return [i.path for i in items], [i.label for i in items], []
    cfg = load_config(run.config) if run.config.is_file() else None
    data_cfg = cfg.data.model_copy(deep=True) if cfg else None
    if data_cfg is None:
        from lungct.config import DataConfig

        data_cfg = DataConfig()
    aliases = {k: v for s in data_cfg.sources for k, v in s.aliases.items()}
    data_cfg.sources = [SourceConfig(path=d, aliases=aliases) for d in data]
    data_cfg.max_images_per_class = None
    scan = scan_samples(collect_samples(data_cfg), progress, hu_offset=predictor.card.preprocess.hu_offset)
    for s in scan.skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
    if not scan.samples:
        first = f" (e.g. {scan.skipped[0].path}: {scan.skipped[0].reason})" if scan.skipped else ""
        raise LungCTError(f"no readable images in {', '.join(data)}{first}")
    unknown = sorted({s.label for s in scan.samples} - set(predictor.classes))
    if unknown:
        raise LungCTError(
            f"labels {unknown} are not classes of this model {predictor.classes}; "
            "add aliases or a label_map in the config"
        )
    return [s.path for s in scan.samples], [s.label for s in scan.samples], scan.skipped


def evaluate(
    run_dir: str | Path,
    out_dir: str | Path,
    data: list[str] | None = None,
    progress: bool = True,
    n_bootstrap: int = N_RESAMPLES,
    tta: bool = False,
    hu_offset: int | None = None,
) -> dict:
    """metrics.json, report, plots and predictions.csv for the run's test part (or `data`); `tta` mirrors too.
    `hu_offset`: the images are 16-bit CT exports storing HU + hu_offset (lungct.data.images), whatever the run's."""
    predictor = Predictor(run_dir, tta=tta, hu_offset=hu_offset)
    out = output_folder(out_dir, "--out")
    paths, labels, skipped = evaluation_items(predictor, data, progress)
    classes = predictor.classes
    y = np.array([classes.index(label) for label in labels])
    # Under torchrun each rank predicts a contiguous run of whole batches; rank 0 gets them all, in order.
    chunks = map_shards(paths, lambda part: [predictor.predict_paths_array(part, progress)], predictor.batch_size)
    if not current().is_main:
        return {}
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(classes)))
    metrics = compute_metrics(y, probs, classes, predictor.card.positive_class)
    # Resample whole groups when the run's split names them (patients / look-alike slices).
    group_of = {i.path: i.group for i in load_split(predictor.run.split)} if not data else {}
    groups = [group_of[p] for p in paths] if group_of and all(p in group_of for p in paths) else None
    metrics["ci95"] = bootstrap_ci(y, probs, classes, predictor.card.positive_class, groups, n_bootstrap)
    unit = f"groups ({len(set(groups))} groups)" if groups else "images"
    metrics["ci95_method"] = f"percentile bootstrap, {n_bootstrap} resamples of {unit}"
    metrics["ece_consistency"] = ece_consistency(probs, metrics["ece"], groups) if len(y) else None
    metrics["tta"] = tta
    metrics["calibrated"] = predictor.calibration is not None
    metrics["data"] = TEST_PART if not data else [str(d) for d in data]
    metrics["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    write_json(out / "metrics.json", metrics)
    # How these figures were made, as fields: whoever reuses metrics.json (compare) decides from them.
    write_json(out / SETTINGS_FILE, {"n_bootstrap": n_bootstrap, "tta": tta, "data": metrics["data"]})
    (out / "classification_report.txt").write_text(text_report(y, probs, classes), encoding="utf-8")
    plot_confusion(metrics["confusion_matrix"]["matrix"], classes, out / "confusion_matrix.png")
    plot_roc(y, probs, classes, out / "roc.png")
    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "predicted", *[f"p_{c}" for c in classes]])
        for path, label, p in zip(paths, labels, probs, strict=True):
            writer.writerow([path, label, classes[int(p.argmax())], *[f"{v:.6f}" for v in p]])
    return metrics
