"""The audit: what in the data could make an evaluation dishonest, gathered into audit.json and audit.md."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from lungct.audit.background import background_check
from lungct.audit.duplicates import MAX_HAMMING, MIN_CORRELATION, find_duplicates, perceptual_hashes
from lungct.audit.leaks import find_leaks
from lungct.audit.report import audit_markdown
from lungct.audit.shortcuts import find_shortcuts, source_differences
from lungct.config import DataConfig, SourceConfig, SplitConfig
from lungct.data.grouping import lookalike_groups
from lungct.data.scan import scan_samples
from lungct.data.sources import collect_samples
from lungct.data.splits import load_split
from lungct.errors import LungCTError
from lungct.files import output_folder
from lungct.run import write_json

log = logging.getLogger("lungct")


def resolve_split_path(split: str | Path) -> Path:
    """A split.csv, or a run directory holding one."""
    path = Path(split)
    if path.is_dir():
        path = path / "split.csv"
    if not path.is_file():
        raise LungCTError(f"split file not found: {path}")
    return path


def counts_section(labels: list[str], sources: list[str]) -> dict:
    per_class = dict(sorted(Counter(labels).items()))
    per_source: dict[str, dict[str, int]] = {}
    for src, y in zip(sources, labels, strict=True):
        per_source.setdefault(src, Counter())[y] += 1
    return {
        "total": len(labels),
        "per_class": per_class,
        "per_source": {s: dict(sorted(c.items())) for s, c in sorted(per_source.items())},
        "imbalance_ratio": round(max(per_class.values()) / min(per_class.values()), 3),
    }


def run_audit(
    data: list[str | Path],
    out: str | Path,
    split: str | Path | None = None,
    progress: bool = True,
    max_hamming: int = MAX_HAMMING,
    min_correlation: float = MIN_CORRELATION,
    background: bool = True,
    hu_offset: int | None = None,
) -> dict:
    """Audit the images under `data` (dataset roots or CSV manifests); with `split`, check it for leaks.

    `background`: also run the background check (lungct.audit.background), which reads every image once more.
    `hu_offset`: 16-bit files store HU + hu_offset, read with the DICOM window as training reads them
    (lungct.data.images); without it they are stretched, and the audit would judge other pixels than the model sees."""
    if not data:
        raise LungCTError("no data given: pass one or more dataset folders or CSV manifests")
    cfg = DataConfig(sources=[SourceConfig(path=str(Path(d).expanduser().resolve())) for d in data])
    listed = collect_samples(cfg)
    out = output_folder(out, "--out")  # before reading every image: a bad --out is found at once
    scan = scan_samples(listed, progress, hu_offset=hu_offset)
    samples, infos = scan.samples, scan.infos
    if not samples:
        raise LungCTError("no readable images in the data given")
    split_cfg = SplitConfig()  # the same look-alike thresholds training uses by default
    groups = lookalike_groups(samples, infos, split_cfg.neighbour_similarity, split_cfg.duplicate_similarity)
    hashes = perceptual_hashes([s.path for s in samples], hu_offset)
    duplicates = find_duplicates(samples, infos, hashes, max_hamming, min_correlation)
    shortcuts, properties = find_shortcuts(samples, infos)
    labels = [s.label for s in samples]
    exact = [d for d in duplicates if d["kind"] == "exact"]
    result: dict = {
        "data": [str(d) for d in data],
        "hu_offset": hu_offset,
        "counts": counts_section(labels, [s.source for s in samples]),
        "skipped": [{"path": s.path, "reason": s.reason} for s in scan.skipped],
        "duplicates": duplicates,
        "duplicate_summary": {
            "exact_groups": len(exact),
            "exact_pairs": sum(len(d["paths"]) * (len(d["paths"]) - 1) // 2 for d in exact),
            "exact_extra_copies": sum(len(d["paths"]) - 1 for d in exact),
            "near_groups": len(duplicates) - len(exact),
            "cross_class_groups": sum(d["cross_class"] for d in duplicates),
            "near_rule": f"phash within {max_hamming} bits and thumbnail correlation >= {min_correlation}",
        },
        "lookalike_groups": {
            "n_groups": len(set(groups)),
            "cross_class_groups": sum(
                len({y for y, g2 in zip(labels, groups, strict=True) if g2 == g}) > 1 for g in set(groups)
            ),
            "group_of": dict(zip([s.path for s in samples], groups, strict=True)),
        },
        "shortcuts": shortcuts,
        "properties": properties,
        "source_differences": source_differences(samples, infos),
        "background": background_check([s.path for s in samples], labels, groups, hu_offset=hu_offset)
        if background
        else {"ran": False, "reason": "not asked for (--no-background)"},
        "split": None,
        "leaks": [],
    }
    if split is not None:
        split_path = resolve_split_path(split)
        leaks, coverage = find_leaks([s.path for s in samples], groups, duplicates, load_split(split_path))
        result["split"] = {"path": str(split_path), **coverage}
        result["leaks"] = leaks
        if coverage["audited_in_split"] == 0:
            log.warning("the split %s names none of the audited images", split_path)
    write_json(out / "audit.json", result)
    (out / "audit.md").write_text(audit_markdown(result), encoding="utf-8")
    return result
