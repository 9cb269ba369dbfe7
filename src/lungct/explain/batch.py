"""Explaining many files into a folder (<name>.npy + <name>.png + explanations.csv), and held-out picks."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lungct.contracts import SplitPart
from lungct.data.images import ImageReadError, shown_path
from lungct.data.scan import printable_path
from lungct.data.splits import load_split
from lungct.errors import LungCTError
from lungct.explain.explainer import Explainer
from lungct.explain.overlay import save_overlay
from lungct.files import natural_key, output_folder
from lungct.run import RunDir


@dataclass
class BatchResult:
    written: list[dict] = field(default_factory=list)
    errors: list[ImageReadError] = field(default_factory=list)


def held_out_paths(run_dir: str | Path, part: str = SplitPart.test, per_class: int = 2) -> list[Path]:
    """`per_class` files of each class in the run's `part`: one per look-alike group first, natural order.

    Distinct groups avoid picking near-duplicate neighbouring slices of one scan; the order is reproducible.
    """
    run = RunDir(run_dir)
    if not run.split.is_file():
        raise LungCTError(f"{run.path} has no split.csv to pick {part} slices from")
    items = [i for i in load_split(run.split) if i.part == part]
    if not items:
        raise LungCTError(f"{run.split} has no rows in part {part!r}")
    picked: list[Path] = []
    for label in sorted({i.label for i in items}):
        rows = sorted((i for i in items if i.label == label), key=lambda i: natural_key(i.path))
        firsts, seen = [], set()
        for row in rows:
            if row.group not in seen:
                seen.add(row.group)
                firsts.append(row)
        rows = firsts + [r for r in rows if r not in firsts]
        picked += [Path(i.path) for i in rows[:per_class]]
    return picked


def _unique_stem(path: Path, used: set[str]) -> str:
    # printable: a name whose bytes are not UTF-8 would otherwise fail in explanations.csv, after its heatmap
    stem = printable_path(path.stem).replace(" ", "_") or "image"
    name, k = stem, 2
    while name in used:
        name, k = f"{stem}-{k}", k + 1
    used.add(name)
    return name


def explain_to_folder(
    explainer: Explainer,
    paths: Iterable[str | Path],
    out: str | Path,
    method: str = "gradcam",
    layers: Iterable[str] | None = None,
    group: str | None = None,
    target: str | None = None,
    progress: bool = False,
) -> BatchResult:
    """Write <name>.npy (heatmap, float32 HxW in [0,1]) and <name>.png (overlay) per readable file."""
    paths = [Path(p) for p in paths]
    _refuse_out_holding_inputs(Path(out), paths)
    out = output_folder(out, "--out")
    result, used = BatchResult(), set()
    bar = tqdm(total=len(paths), desc=f"explaining ({method})", unit="img", disable=not progress, leave=False)
    for item in explainer.explain_paths(paths, method, layers, group, target):
        bar.update(1)
        if isinstance(item, ImageReadError):
            result.errors.append(item)
            continue
        name = _unique_stem(Path(item.path or "image"), used)
        np.save(out / f"{name}.npy", item.heatmap)
        save_overlay(item, out / f"{name}.png", explainer.card.preprocess)
        row = item.to_dict()
        row.update(npy=f"{name}.npy", png=f"{name}.png", path=row["path"] and printable_path(shown_path(row["path"])))
        result.written.append(row)
    bar.close()
    _write_index(out, result.written)
    return result


def _refuse_out_holding_inputs(out: Path, paths: list[Path]) -> None:
    """An --out that holds the slices being explained would get overlays written over them (x.png for x.png),
    and the next scan of that folder would take the overlays for slices."""
    if not out.is_dir():
        return
    where = out.resolve()
    inside = next((p for p in paths if where in p.resolve().parents), None)
    if inside is not None:
        raise LungCTError(
            f"--out {out} holds the images being explained ({shown_path(str(inside))}); write to another folder"
        )


def _write_index(out: Path, rows: list[dict]) -> None:
    fields = ["path", "npy", "png", "label", "probability", "predicted", "method", "layers", "n_layers"]
    with (out / "explanations.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*fields, "probabilities"], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "probabilities": json.dumps(row["probabilities"])})
