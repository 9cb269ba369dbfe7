"""Nodule candidates as features: the one hand-made representation aimed at what the default misses.

The default calls most benign slices normal. What tells a benign slice from a normal one is a small opacity in the
lung, a few pixels wide at 224 px, that globally pooled ImageNet features dilute; texture statistics (body_levers.py)
read the whole body and, as the air and ring rows showed, acquisition with it. This row describes only isolated
opacities: soft-tissue components wholly enclosed by air-dark pixels inside the body (in IQ-OTH/NCCD's window lung and
fat are black, tissue speckled grey), which is what a nodule or a vessel seen end-on is on one slice. Per slice, at the
512 px scale: how many candidates there are in five size bins, the two largest areas, the largest's shape (solidity,
eccentricity) and brightness, the candidates' total area, and how much of the body is air-dark.

Written by hand rather than with a detector library because no pretrained nodule detector is available here
(no network, no weights beyond ../shared's ImageNet MobileNetV2); the parts are scipy.ndimage and scikit-image.

Juxtapleural nodules (touching the chest wall or mediastinum) are not enclosed and are missed, and in some malignant
acquisitions the chest wall is as dark as lung (docs/model-quality.md), so the candidates are a screen, not a
segmentation. Scored as body_levers.py (lungct's probe on each fold's training part of the default's five draws, each
test slice scored once, paired per fold against `last`).

Usage: python benchmarks/model_quality/nodule_candidates.py [ROW ...] -> benchmarks/results/nodule_candidates.json
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from body_levers import extract, extract_statistics, pool_draws
from feature_levers import frozen_net, merge_results, mirrored, paired, save_arrays, score_draws, summarise_folds
from oof import ROOT
from PIL import Image

from lungct.data.field import body_hull

ROWS = ["nodules", "last+nodules", "last|nodules", "last|texture|nodules"]
# "patches": the default's backbone on a close-up of each of the PATCHES largest candidates (a square PATCH_CONTEXT
# times the candidate's box, at least MIN_PATCH px at 512, resized to 224 px like a slice), mean- and max-pooled over
# them: detect, then describe, as nodule classifiers on CT usually work. A slice without a candidate gets zeros.
PATCH_ROWS = ["patches", "last+patches", "last|patches"]
PATCHES = 3
PATCH_CONTEXT = 2.5
MIN_PATCH = 64
SCALE = 512  # px: areas and distances are given at this side, whatever the slice's size
DARK_LEVEL = 4  # mean grey level (7 px window) below which a pixel is air-dark: lung or fat, not tissue
SMOOTHING = 7  # px at 512: the window that turns speckled tissue grey and leaves lung black
MIN_DARK_REGION = 0.004  # of the slice: a dark region smaller than this is a gap in tissue, not lung
MIN_CANDIDATE = 6  # px at 512: smaller enclosed specks are noise
AREA_BINS = (6, 20, 60, 200, 600)  # px at 512: the lower edges of the five size bins


def candidates(img: Image.Image) -> tuple[list, np.ndarray, np.ndarray]:
    """(regions, dark, body): scikit-image's regions of the tissue that the slice's large air-dark regions inside the
    body wholly enclose (their holes), at least MIN_CANDIDATE px at 512 and largest first (with the grey slice as
    their intensity image); the dark regions; and the body's hull."""
    from scipy import ndimage as ndi
    from skimage.measure import label, regionprops

    grey = np.asarray(img.convert("L")).astype(np.float32)
    scale = max(img.size) / SCALE
    body = body_hull(img)
    hull = ndi.binary_erosion(body, iterations=max(1, round(4 * scale)))
    dark = (ndi.uniform_filter(grey, max(3, round(SMOOTHING * scale))) < DARK_LEVEL) & hull
    labels, n = ndi.label(dark)
    sizes = ndi.sum(dark, labels, range(1, n + 1))
    dark = np.isin(labels, 1 + np.flatnonzero(sizes > MIN_DARK_REGION * dark.size))
    enclosed = ndi.binary_fill_holes(dark) & ~dark
    regions = [r for r in regionprops(label(enclosed), intensity_image=grey) if r.area / scale**2 >= MIN_CANDIDATE]
    return sorted(regions, key=lambda r: r.area, reverse=True), dark, body


def nodule_features(img: Image.Image) -> np.ndarray:
    """12 statistics of the slice's enclosed opacities (see the module docstring)."""
    regions, dark, body = candidates(img)
    areas = np.array([r.area * (SCALE / max(img.size)) ** 2 for r in regions])
    counts = np.histogram(areas, bins=[*AREA_BINS, np.inf])[0]
    largest = regions[0] if regions else None
    second = areas[1] if len(areas) > 1 else 0.0
    shape = [largest.solidity, largest.eccentricity, largest.intensity_mean / 255] if largest else [0.0, 0.0, 0.0]
    return np.array(
        [
            *np.log1p(counts),
            np.log1p(areas[0] if len(areas) else 0.0),
            np.log1p(second),
            *shape,
            np.log1p(areas.sum()),
            dark.sum() / max(int(body.sum()), 1),
        ],
        dtype=np.float32,
    )


def patch_boxes(img: Image.Image) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) in the slice's pixels of the square close-ups of its PATCHES largest candidates."""
    scale = max(img.size) / SCALE
    boxes = []
    for r in candidates(img)[0][:PATCHES]:
        top, left, bottom, right = r.bbox
        half = max(MIN_PATCH * scale, PATCH_CONTEXT * max(bottom - top, right - left)) / 2
        cy, cx = r.centroid
        boxes.append((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
    return boxes


@torch.inference_mode()
def extract_patches(paths: list[str]) -> dict[str, np.ndarray]:
    """Per slice and its mirror: the mean and max of the pooled features of its candidates' close-ups (zeros when
    it has none), cached as runs/screen/body_levers_patches.npz."""
    target = ROOT / "runs" / "screen" / "body_levers_patches.npz"
    if target.exists():
        return {"patches": np.load(target)["patches"]}
    net, pre = frozen_net()
    out: dict[str, list] = {"patches": []}
    for path in paths:
        img = pre.load(path)
        boxes = patch_boxes(img)
        if not boxes:
            out["patches"].append(np.zeros((2, 2 * 1280), dtype=np.float32))
            continue
        x = torch.cat([torch.from_numpy(pre.to_array(img.crop(box)))[None] for box in boxes])  # black outside
        f = np.stack([mirrored(net, v[None]) for v in x], 1)  # (2 mirror, patches, 1280)
        out["patches"].append(np.concatenate([f.mean(1), f.max(1)], -1))
    return save_arrays(out, target)


def row_features(row: str, f: dict[str, np.ndarray]) -> np.ndarray | list[np.ndarray]:
    if row in ("nodules", "patches"):
        return f[row]
    if row in ("last+nodules", "last+patches"):
        return np.concatenate([f["last"], f[row.split("+")[1]]], -1)
    if row.startswith("last|"):  # separate probes, their probabilities averaged
        return [f[name] for name in row.split("|")]
    raise SystemExit(f"unknown row {row!r}; choose from {ROWS + PATCH_ROWS}")


def main(rows: list[str]) -> None:
    d = pool_draws()
    feats = extract(d.paths) | extract_statistics("nodules", d.paths, nodule_features)
    if any("patches" in row for row in rows):
        feats |= extract_patches(d.paths)
    default = json.loads((ROOT / "benchmarks" / "results" / "feature_levers.json").read_text())["last"]
    base = np.array(default["balanced_accuracy_per_fold"])
    results = {}
    for row in rows:
        summary = summarise_folds(*score_draws(row_features(row, feats), None, d.y, d.groups, d.parts, d.classes))
        summary["paired_vs_default"] = paired(summary["balanced_accuracy_per_fold"], base)
        results[row] = summary
        print(row, {k: v for k, v in summary.items() if k != "balanced_accuracy_per_fold"}, flush=True)
    merge_results("nodule_candidates.json", results)


if __name__ == "__main__":
    main(sys.argv[1:] or ROWS)
