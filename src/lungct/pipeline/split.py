"""The split as its own pipeline step: `lungct split` writes split.csv, `lungct train --split-file` uses it.

The trainer draws its split from the config; a pipeline wants the split stage's file instead, so that changing
a training parameter reruns training but not the split (and the split can be audited before training).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from lungct.config import ExperimentConfig
from lungct.data.splits import PARTS, SplitItem, load_split, part_counts, save_split
from lungct.errors import LungCTError
from lungct.files import output_folder
from lungct.run import RunDir
from lungct.training.trainer import EpochCallback, Trainer

log = logging.getLogger("lungct")


def write_split(cfg: ExperimentConfig, out: str | Path, progress: bool = True) -> tuple[list[SplitItem], list]:
    """Scan the config's data, split it as training would, write `out` (split.csv); (items, skipped files)."""
    from lungct.data.prepare import prepare_data, split_items

    out = Path(out)
    if out.is_dir():
        raise LungCTError(f"--out {out} is a folder; give the split file's name, e.g. {out / 'split.csv'}")
    output_folder(out.parent, "the folder of --out")  # before the scan, which reads every image
    data = prepare_data(cfg, progress)
    items = split_items(data, cfg)
    save_split(items, out)
    return items, data.skipped  # prepare_data has logged each skipped file


def read_split_file(path: str | Path) -> list[SplitItem]:
    """split.csv (path,label,group,part) with a clear error for anything else."""
    path = Path(path)
    items = load_split(path)
    if not items:
        raise LungCTError(f"{path} lists no images")
    unknown = sorted({i.part for i in items} - set(PARTS))
    if unknown:
        raise LungCTError(f"{path}: unknown parts {unknown}; expected train, val, test, calib")
    missing = [i.path for i in items if not Path(i.path).is_file()]
    if missing:
        raise LungCTError(f"{path}: {len(missing)} listed images do not exist, e.g. {missing[0]}")
    return items


def train_with_split(
    cfg: ExperimentConfig,
    out: str | Path,
    split_file: str | Path,
    progress: bool = True,
    overwrite: bool = False,
    callbacks: Sequence[EpochCallback] = (),
) -> RunDir:
    """`lungct.training.train`, on the split in `split_file` (copied into the run as split.csv)."""
    items = read_split_file(split_file)
    counts = part_counts(items)
    log.info("split from %s: %s", split_file, {p: sum(c.values()) for p, c in counts.items()})
    trainer = Trainer(cfg, Path(out), progress=progress, overwrite=overwrite, callbacks=callbacks, items=items)
    return trainer.fit()
