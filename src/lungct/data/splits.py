"""Stratified train/validation/test splits that keep every group inside one part.

Both modes go through scikit-learn's StratifiedGroupKFold: in random mode each image is its own group,
so the two modes differ only in what counts as a group, and their results can be compared honestly.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from lungct.config import SEED_MAX
from lungct.contracts import SplitPart
from lungct.errors import LungCTError
from lungct.files import atomic_csv, repeats

# "calib" is optional: whole groups held out for calibration and operating points only. Validation also picks
# the early-stopping epoch, so probabilities on it are optimistically fitted; a part no choice has touched
# gives an honest temperature and threshold.
PARTS = tuple(SplitPart)  # train, val, calib, test (lungct.contracts.SplitPart)


@dataclass(frozen=True)
class SplitItem:
    path: str
    label: str
    group: str
    part: str


log = logging.getLogger("lungct")


def derived_seed(seed: int, k: int) -> int:
    """The seed of the split's k-th further draw, kept within SEED_MAX so that the largest valid seed works too."""
    return (seed + k) % (SEED_MAX + 1)


def stratified_group_folds(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int, purpose: str):
    """scikit-learn's StratifiedGroupKFold splits, its refusals turned into one clear LungCTError first: too few
    groups, or (as sklearn judges it) every class smaller than the number of folds, or a seed it cannot take (the
    config checks its own; a seed set in code or from the command line arrives here unchecked)."""
    if not 0 <= seed <= SEED_MAX:
        raise LungCTError(f"seed {seed} is out of range: it must be between 0 and {SEED_MAX}")
    n_groups = len(set(np.asarray(groups).tolist()))
    if n_groups < n_splits:
        raise LungCTError(f"only {n_groups} groups: too few for {purpose} ({n_splits} group folds)")
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    if (counts < n_splits).all():
        raise LungCTError(
            f"every class has fewer than {n_splits} images (largest: {int(counts.max())}): too few for {purpose}; "
            "add images or lower the fractions / fold count"
        )
    small = {str(c): int(n) for c, n in zip(classes, counts, strict=True) if n < n_splits}
    if small:  # said once in lungct's words; scikit-learn's own warning names no class and repeats per call
        shown = ", ".join(f"{c} ({n})" for c, n in small.items())
        log.warning("%s: classes with fewer images than its %d folds may miss some parts: %s", purpose, n_splits, shown)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The least populated class in y has only", UserWarning)
        return iter(list(splitter.split(np.zeros(len(labels)), labels, groups)))  # drawn here, under the filter


def hold_out_groups(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a stratified, group-respecting hold-out of about `fraction` of the items."""
    n_splits = max(2, round(1.0 / fraction))
    _, held = next(stratified_group_folds(labels, groups, n_splits, seed, f"holding out {fraction:.0%} by group"))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def make_split(
    labels: list[str],
    groups: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    preset_parts: list[str | None] | None = None,
    calib_fraction: float = 0.0,
) -> list[str]:
    """Part name per item. `preset_parts` (from pre-split folders) are kept; a missing val is carved.

    With `calib_fraction` > 0 a calibration part of about that fraction of all items is carved from training.
    """
    y = np.asarray(labels)
    g = np.asarray(groups)
    parts = np.array([SplitPart.train.value] * len(y), dtype=object)
    if preset_parts is not None and all(p is not None for p in preset_parts):
        parts[:] = preset_parts
        if SplitPart.val not in set(preset_parts):
            train = np.flatnonzero(parts == SplitPart.train)
            held = hold_out_groups(y[train], g[train], val_fraction, seed)
            parts[train[held]] = SplitPart.val.value
        return _carve_calib(parts, y, g, calib_fraction, seed)
    test = hold_out_groups(y, g, test_fraction, seed)
    parts[test] = SplitPart.test.value
    rest = np.flatnonzero(~test)
    val = hold_out_groups(y[rest], g[rest], val_fraction / (1.0 - test_fraction), derived_seed(seed, 1))
    parts[rest[val]] = SplitPart.val.value
    return _carve_calib(parts, y, g, calib_fraction, seed)


def _carve_calib(parts: np.ndarray, y: np.ndarray, g: np.ndarray, fraction: float, seed: int) -> list[str]:
    if fraction > 0:
        train = np.flatnonzero(parts == SplitPart.train)
        share = fraction * len(parts) / max(len(train), 1)
        if share >= 0.5:
            raise LungCTError(f"calib_fraction {fraction} would take {share:.0%} of the training part")
        held = hold_out_groups(y[train], g[train], share, derived_seed(seed, 2))
        parts[train[held]] = SplitPart.calib.value
    return list(parts)


def tuning_part(items: list[SplitItem]) -> str:
    """Where calibration and thresholds are fitted: the calibration part if the split has one, else val."""
    return SplitPart.calib.value if any(i.part == SplitPart.calib for i in items) else SplitPart.val.value


def part_counts(items: list[SplitItem]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = {p: Counter() for p in PARTS}
    for item in items:
        counts[item.part][item.label] += 1
    return {p: dict(sorted(c.items())) for p, c in counts.items()}


def save_split(items: list[SplitItem], path: Path) -> None:
    atomic_csv(path, ["path", "label", "group", "part"], ((i.path, i.label, i.group, i.part) for i in items))


def load_split(path: Path) -> list[SplitItem]:
    """split.csv's rows; a LungCTError for a file without the columns path,label,group,part (or not text)."""
    if not path.is_file():
        raise LungCTError(f"split file not found: {path}")
    not_a_split = f"{path} is not a split file: it needs the columns path,label,group,part"
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not {"path", "label", "group", "part"} <= set(reader.fieldnames or ()):
                raise LungCTError(not_a_split)
            rows = [(reader.line_num, SplitItem(r["path"], r["label"], r["group"], r["part"])) for r in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LungCTError(not_a_split) from exc
    check_listed_once(rows, path)
    return [item for _, item in rows]


def check_listed_once(rows: list[tuple[int, SplitItem]], path: Path) -> None:
    """Refuse a split that lists one image twice: in two parts it is a leak (trained on, then scored as unseen);
    in one part it counts twice. rows: (line number, item) as read from `path`. Paths are compared made absolute
    (as training opens them), so a.png and ./a.png are one image."""
    listed = [(line, item) for line, item in rows if item.path]  # an empty row: the readers report it their way
    pairs = repeats(os.path.abspath(item.path) for _, item in listed)
    if not pairs:
        return
    (line_a, a), (line_b, b) = listed[pairs[0][0]], listed[pairs[0][1]]
    where = f"in both {a.part} and {b.part}" if a.part != b.part else f"twice in {a.part}"
    more = f" ({len(pairs) - 1} more repeated rows)" if len(pairs) > 1 else ""
    raise LungCTError(
        f"{path} lines {line_a} and {line_b} list {a.path} {where}{more}; each image belongs once in one part"
    )
