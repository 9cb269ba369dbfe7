"""Finding labelled images: class-per-folder trees (flat or pre-split) and CSV manifests.

The output is a flat list of `Sample`s; everything downstream (splits, datasets, audits) works on that
list, so a new dataset layout is one new reader here and nothing else.
"""

from __future__ import annotations

import csv
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from lungct.config import DataConfig, SourceConfig
from lungct.data.images import is_image_file
from lungct.data.labels import normalise_label
from lungct.errors import LungCTError
from lungct.files import natural_key, repeats

log = logging.getLogger("lungct")

# Files only lungct writes, each into the folder a command makes: a run (train, ensemble, cv's folds, compare's and
# tune's trials: model.json, summary.json), an evaluation (metrics.json, evaluation.json), cv (cv.json), audit,
# drift, compare (leaderboard.json), tune (tune.json), threshold (operating_points.json) and explain
# (explanations.csv). A folder inside a dataset that holds one is such an output, written there by an --out
# inside the data, and its plots (curves.png, roc.png, overlays) are not slices: the folder and everything under
# it is left out of the scan. Any one file suffices, as an interrupted command may not have written the others.
OUTPUT_MARKERS = (
    "model.json",
    "summary.json",
    "metrics.json",
    "evaluation.json",
    "cv.json",
    "audit.json",
    "drift.json",
    "leaderboard.json",
    "tune.json",
    "operating_points.json",
    "explanations.csv",
)

SPLIT_DIR_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class Sample:
    path: str
    label: str
    group: str | None = None  # patient / source id when the data says so
    preset_part: str | None = None  # train/val/test for layouts that arrive pre-split
    source: str = ""


def check_sources(config: DataConfig) -> None:
    """Fail on a config without data, or with a source path that is not there, before anything is started (an
    MLflow run, a run directory) on its behalf."""
    if not config.sources:
        raise LungCTError("no data given: set data.sources in the config (train also takes --data DIR)")
    for source in config.sources:
        if not Path(source.path).expanduser().exists():
            raise LungCTError(f"data path not found: {Path(source.path).expanduser()}")


def collect_samples(config: DataConfig, seed: int = 0) -> list[Sample]:
    check_sources(config)
    samples: list[Sample] = []
    for source in config.sources:
        samples.extend(read_source(source))
    _refuse_images_read_twice(samples)
    samples = [_map_label(s, config.label_map) for s in samples]
    if config.max_images_per_class:
        samples = _subsample(samples, config.max_images_per_class, seed)
    if not samples:
        raise LungCTError("the data sources hold no images")
    return samples


def _refuse_images_read_twice(samples: list[Sample]) -> None:
    """One image reached twice (a source given twice, overlapping sources, a symlink to another file of the data):
    a split could put its two copies in two parts, so that it is trained on and scored as unseen. Paths are
    resolved by every reader, so a repeat is one file. (A manifest's own repeats are refused with its line numbers
    by read_manifest.)"""
    pairs = repeats(s.path for s in samples)
    if pairs:
        seen, sample = samples[pairs[0][0]], samples[pairs[0][1]]
        sources = seen.source if seen.source == sample.source else f"{seen.source} and {sample.source}"
        raise LungCTError(
            f"{sample.path} is read twice (data: {sources}): a source given twice, sources that overlap, or a "
            "link to another file of the data; give each image once"
        )


def read_source(source: SourceConfig) -> list[Sample]:
    """One source's samples; its path exists (collect_samples has checked it with check_sources)."""
    root = Path(source.path).expanduser()
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise LungCTError(f"data path {root} is a file but not a CSV manifest")
        samples = read_manifest(root, source.aliases)
    else:
        samples = read_folder_tree(root, source.aliases)
        if source.groups:
            samples = _attach_groups(samples, root, source)
    if source.include is not None:
        keep = set(source.include)
        samples = [s for s in samples if s.label in keep]
        if not samples:
            raise LungCTError(f"{root}: none of the labels {sorted(keep)} were found")
    return samples


class OutputFolders:
    """Which folders of a dataset are lungct outputs (OUTPUT_MARKERS), each looked at once and reported once."""

    def __init__(self) -> None:
        self.marker: dict[Path, str | None] = {}

    def check(self, folder: Path) -> bool:
        """True for an output folder; the first time, a warning names it and the file that marks it."""
        if folder not in self.marker:
            found = next((name for name in OUTPUT_MARKERS if (folder / name).is_file()), None)
            self.marker[folder] = found
            if found:
                log.warning("skipped folder %s: it holds %s, a lungct output, not data", folder, found)
        return self.marker[folder] is not None

    def inside(self, file: Path, top: Path) -> bool:
        """True when a folder between `top` (excluded) and `file` is an output folder."""
        folder = top
        for name in file.relative_to(top).parts[:-1]:
            folder = folder / name
            if self.check(folder):
                return True
        return False


def read_folder_tree(root: Path, aliases: dict[str, str]) -> list[Sample]:
    outputs = OutputFolders()
    subdirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and not outputs.check(d)),
        key=lambda d: natural_key(d.name),
    )
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_DIR_NAMES]
    if split_dirs and len(split_dirs) == len(subdirs):
        samples = []
        for split_dir in split_dirs:
            part = SPLIT_DIR_NAMES[split_dir.name.lower()]
            samples += _read_class_dirs(split_dir, aliases, part, root.name, outputs)
    else:
        samples = _read_class_dirs(root, aliases, None, root.name, outputs)
    if not samples:
        raise LungCTError(f"{root}: no images in class folders (expected ROOT/<class>/<image>)")
    return samples


def _read_class_dirs(
    root: Path, aliases: dict[str, str], part: str | None, source: str, outputs: OutputFolders
) -> list[Sample]:
    samples = []
    for class_dir in sorted(root.iterdir(), key=lambda d: natural_key(d.name)):
        if not class_dir.is_dir() or class_dir.name.startswith(".") or outputs.check(class_dir):
            continue
        label = normalise_label(class_dir.name, aliases)
        files = sorted(
            (p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p) and not outputs.inside(p, class_dir)),
            key=lambda p: natural_key(str(p.relative_to(class_dir))),
        )
        samples += [Sample(str(p.resolve()), label, None, part, source) for p in files]
    return samples


def read_manifest(path: Path, aliases: dict[str, str]) -> list[Sample]:
    """CSV with columns path,label[,group]; relative paths are taken from the CSV's folder.

    The header is checked before the rows, so that a file that is not a manifest at all (a .txt note, a binary
    file) is named as such rather than as a manifest without rows."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv_with_columns(fh, {"path", "label"})
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except UnicodeDecodeError:
        raise LungCTError(f"{path} is not a manifest CSV: it is not UTF-8 text") from None
    except (OSError, csv.Error) as exc:
        raise LungCTError(f"cannot read manifest {path}: {exc}") from exc
    if not columns:
        raise LungCTError(f"{path} is not a manifest CSV: it is empty; needs the columns path,label[,group]")
    missing = {"path", "label"} - columns
    if missing:
        raise LungCTError(
            f"{path} is not a manifest CSV: it lacks column(s) {sorted(missing)}; needs path,label[,group]"
        )
    if not rows:
        raise LungCTError(f"manifest {path} has no rows")
    samples = []
    for i, row in enumerate(rows, start=2):
        if not row.get("path") or not row.get("label"):
            raise LungCTError(f"manifest {path} line {i}: empty path or label")
        file = Path(row["path"]).expanduser()
        file = file if file.is_absolute() else path.parent / file
        group = (row.get("group") or "").strip() or None
        part = SPLIT_DIR_NAMES.get((row.get("split") or "").strip().lower())
        samples.append(
            Sample(
                str(file.resolve()),
                normalise_label(row["label"], aliases),
                f"{path.stem}:{group}" if group else None,
                part,
                path.stem,
            )
        )
    pairs = repeats(s.path for s in samples)
    if pairs:
        raise LungCTError(_repeated_rows(path, rows, samples, pairs))
    return samples


def _repeated_rows(path: Path, rows: list[dict], samples: list[Sample], pairs: list[tuple[int, int]]) -> str:
    """The refusal of a manifest that lists a file twice: a random split can put the two rows in two parts (the
    image is then trained on and scored as unseen), and two labels would score one image against two truths.
    Labels are compared as lungct reads them (normalised) and named as the manifest writes them. `pairs`: row
    indices (files.repeats); a row's line is its index + 2, after the header."""
    a, b = pairs[0]
    differ = samples[a].label != samples[b].label
    labels = f" with two labels, {rows[a]['label'].strip()!r} and {rows[b]['label'].strip()!r}" if differ else ""
    more = f" ({len(pairs) - 1} more repeated rows)" if len(pairs) > 1 else ""
    return f"manifest {path} lines {a + 2} and {b + 2} list {samples[a].path} twice{labels}{more}; list each image once"


def csv_with_columns(fh: TextIO, columns: set[str]) -> csv.DictReader:
    """A reader for a CSV whose header holds `columns`, separated by commas, semicolons or tabs.

    Spreadsheets save "CSV" with semicolons where the comma is the decimal mark, and tab-separated text; the
    header tells which, so a manifest exported that way reads as it is instead of "lacks the column path".
    Files are opened as utf-8-sig, which drops the byte-order mark Excel's "CSV UTF-8" starts with."""
    header = fh.readline()
    fh.seek(0)
    for delimiter in ",;\t":
        if columns <= {name.strip() for name in next(csv.reader([header], delimiter=delimiter), [])}:
            return csv.DictReader(fh, delimiter=delimiter)
    return csv.DictReader(fh)


def _attach_groups(samples: list[Sample], root: Path, source: SourceConfig) -> list[Sample]:
    spec = source.groups
    csv_path = root / spec.csv
    needed = {spec.path_column, spec.group_column}
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv_with_columns(fh, needed)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except UnicodeDecodeError:
        raise LungCTError(f"groups file {csv_path} is not UTF-8 text") from None
    except (OSError, csv.Error) as exc:
        raise LungCTError(f"cannot read groups file {csv_path}: {exc}") from exc
    if needed - columns:
        raise LungCTError(f"{csv_path} needs columns {spec.path_column!r} and {spec.group_column!r}")
    groups = {}
    for line, row in enumerate(rows, start=2):
        path, group = row[spec.path_column], row[spec.group_column]
        if path is None or group is None:  # DictReader fills a short row's missing cells with None
            raise LungCTError(f"groups file {csv_path} line {line}: fewer cells than the header names")
        groups[str((root / path).resolve())] = group.strip()
    out = []
    for s in samples:
        group = groups.get(s.path)
        out.append(Sample(s.path, s.label, f"{s.source}:{group}" if group else None, s.preset_part, s.source))
    return out


def _map_label(sample: Sample, label_map: dict[str, str]) -> Sample:
    if sample.label not in label_map:
        return sample
    return Sample(sample.path, label_map[sample.label], sample.group, sample.preset_part, sample.source)


def _subsample(samples: list[Sample], per_class: int, seed: int) -> list[Sample]:
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    rng = random.Random(seed)
    keep = set()
    for items in by_class.values():
        keep.update(s.path for s in (rng.sample(items, per_class) if len(items) > per_class else items))
    return [s for s in samples if s.path in keep]
