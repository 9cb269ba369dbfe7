"""From an experiment's data config to checked, grouped and split items: the path train, cv and audit share."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lungct.config import ExperimentConfig
from lungct.data.grouping import lookalike_groups
from lungct.data.scan import ImageInfo, Skipped, scan_samples
from lungct.data.sources import Sample, collect_samples
from lungct.data.splits import SplitItem, make_split
from lungct.errors import LungCTError

log = logging.getLogger("lungct")


@dataclass
class PreparedData:
    samples: list[Sample]
    infos: list[ImageInfo]
    groups: list[str]
    skipped: list[Skipped]

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.samples]

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))


def prepare_data(cfg: ExperimentConfig, progress: bool = True) -> PreparedData:
    samples = collect_samples(cfg.data, cfg.seed)
    scan = scan_samples(samples, progress, cfg.data.scan_workers, cfg.data.scan_cache, cfg.data.hu_offset)
    for skipped in scan.skipped:
        log.warning("skipped %s: %s", skipped.path, skipped.reason)
    if not scan.samples:
        raise LungCTError("no readable images in the data sources")
    if cfg.split.mode == "group":
        groups = lookalike_groups(
            scan.samples, scan.infos, cfg.split.neighbour_similarity, cfg.split.duplicate_similarity
        )
    else:
        groups = [f"i{i:06d}" for i in range(len(scan.samples))]
    data = PreparedData(scan.samples, scan.infos, groups, scan.skipped)
    if len(data.classes) < 2:
        raise LungCTError(f"need at least two classes, found {data.classes}")
    return data


def split_items(data: PreparedData, cfg: ExperimentConfig) -> list[SplitItem]:
    parts = make_split(
        data.labels,
        data.groups,
        cfg.split.val_fraction,
        cfg.split.test_fraction,
        cfg.seed,
        [s.preset_part for s in data.samples],
        cfg.split.calib_fraction,
    )
    return [SplitItem(s.path, s.label, g, p) for s, g, p in zip(data.samples, data.groups, parts, strict=True)]
