"""Two representations the study had not tried, read by the default's probe on its own five fold draws.

Sessions 19 to 22 found the frozen ImageNet features to be the ceiling: no head, fine-tuning or feature-level
lever beats them. Two ways of looking at a slice remain that need no other weights:

- **pooling over the body only** (`hullpool`): the default averages the last feature map over the whole slice, so
  the few cells a nodule touches are diluted by table and air. Here each cell of the map is weighted by the share
  of it inside the body's convex hull (the tissue components of `lungct.data.field`, table left out), at 224 px
  (a 7x7 map) and at 448 px (14x14, where a nodule covers a larger share of a cell), beside the default's features;
- **hand-made texture** (`texture`): the radiomics features classic papers on this data set use, grey-level
  co-occurrence statistics (scikit-image's graycomatrix/graycoprops) and uniform local binary pattern histograms,
  inside the body at native resolution. Alone, beside the default's features, and as a second probe averaged with
  the default's (`last|texture`).

Scoring as feature_levers.py: lungct's probe fit on each fold's training part, each test slice scored once, paired
per fold against the default's `last` row of feature_levers.json. The folds are the default's five cv draws as
`gpu_pack.pool_and_parts` draws them (no runs/ folders needed); the `last` row here must reproduce feature_levers'.

Usage: python benchmarks/model_quality/body_levers.py [ROW ...] -> benchmarks/results/body_levers.json
(ROW: one of ROWS, or of SHORTCUT_ROWS: where the texture's signal comes from)
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from feature_levers import Draws, frozen_net, merge_results, paired, save_arrays, score_draws, summarise_folds
from gpu_pack import pool_and_parts
from oof import ROOT
from PIL import Image

from lungct.audit.background import background_features, lbp_and_histogram
from lungct.data.field import body_hull

ROWS = ["last", "hullpool224", "hullpool448", "texture", "last+texture", "last|texture"]
# where the texture's signal comes from: its parts alone, and the same statistics outside the body (air, table),
# where no lesion can be, so whatever they predict there is acquisition, not anatomy
PARTS = {"texture:glcm": slice(0, 18), "texture:lbp": slice(18, 48), "texture:hist": slice(48, 64)}
SHORTCUT_ROWS = [*PARTS, "background", "last|background", "background@512", "last@512", "ring", "last|ring"]
# "ring": the same texture statistics on the outer band of the body's hull alone (RING px deep at 512 px: skin,
# subcutaneous fat, and the air or cushion the convex hull takes in), inside the hull but where no lung nodule can be:
# what texture reads there is acquisition (noise, reconstruction) or body build, not the lesion
RING = 16
# "@512": the same row on the 512x512 slices only (trained and tested), so the malignant-only image sizes, a known
# shortcut that also changes how much air a slice has, cannot be what the background row reads
CACHE = ROOT / "runs" / "screen" / "body_levers.npz"
GLCM_DISTANCES = (1, 2, 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


def cell_weights(mask: np.ndarray, cells: int) -> np.ndarray:
    """(cells, cells) share of each feature-map cell inside the mask (the map tiles the resized square slice)."""
    return np.asarray(Image.fromarray(mask.astype(np.float32)).resize((cells, cells), Image.BOX))


def texture(img: Image.Image, mask: np.ndarray) -> np.ndarray:
    """GLCM statistics of the body's box (averaged over four angles) and uniform LBP histograms inside the hull."""
    from skimage.feature import graycomatrix, graycoprops

    grey = np.asarray(img.convert("L"))
    ys, xs = np.nonzero(mask)
    box = grey[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] // 8  # 32 grey levels
    glcm = graycomatrix(box, GLCM_DISTANCES, [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], 32, True, True)
    feats = [graycoprops(glcm, p).mean(1) for p in GLCM_PROPS]
    return np.concatenate([*feats, lbp_and_histogram(grey, mask)]).astype(np.float32)


def masked_texture(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`texture`'s 64 statistics of the pixels in `mask` alone: the co-occurrence matrix counts only pairs of pixels
    that both lie in the mask (the rest get a 33rd grey level, whose row and column are dropped)."""
    from skimage.feature import graycomatrix, graycoprops

    levels = np.where(mask, grey // 8, 32).astype(np.uint8)
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    glcm = graycomatrix(levels, GLCM_DISTANCES, angles, 33, True, False)[:32, :32].astype(np.float64)
    glcm /= np.maximum(glcm.sum((0, 1), keepdims=True), 1)
    feats = [graycoprops(glcm, p).mean(1) for p in GLCM_PROPS]
    return np.concatenate([*feats, lbp_and_histogram(grey, mask)]).astype(np.float32)


def body_ring(img: Image.Image) -> np.ndarray:
    """The outer RING px (scaled from 512 px) of the body's hull."""
    from scipy.ndimage import binary_erosion

    hull = body_hull(img)
    depth = max(1, round(RING * max(img.size) / 512))
    return hull & ~binary_erosion(hull, iterations=depth, border_value=0)


def ring_texture(img: Image.Image) -> np.ndarray:
    """`texture`'s statistics of the body's outer band alone."""
    return masked_texture(np.asarray(img.convert("L")), body_ring(img))


@torch.inference_mode()
def extract(paths: list[str]) -> dict[str, np.ndarray]:
    """Per slice and its mirror: the default's pooled features, hull-weighted pools at 224 and 448 px; texture."""
    if CACHE.exists():
        z = np.load(CACHE)
        return {k: z[k] for k in z.files}
    net, pre = frozen_net()
    pres = {224: pre, 448: pre.__class__(**{**pre.__dict__, "input_size": 448})}
    out: dict[str, list] = {"last": [], "hullpool224": [], "hullpool448": [], "texture": []}
    t0 = time.time()
    for n, path in enumerate(paths):
        img = pre.load(path)
        mask = body_hull(img)
        for size, p in pres.items():
            x = torch.from_numpy(p.to_array(img))[None]
            maps = net.forward_features(torch.cat([x, x.flip(-1)]))  # (2, 1280, c, c)
            w = torch.tensor(cell_weights(mask, maps.shape[-1]))
            w = torch.stack([w, w.flip(-1)])[:, None]  # the mirror's mask is the mask mirrored
            hull_avg = (maps * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1e-6)
            hull_max = maps.masked_fill(w < 0.5, float("-inf")).amax((2, 3))
            hull_max = torch.where(torch.isfinite(hull_max), hull_max, maps.amax((2, 3)))
            if size == 224:
                out["last"].append(maps.mean((2, 3)).numpy())
            out[f"hullpool{size}"].append(torch.cat([hull_avg, hull_max], 1).numpy())
        t = texture(img, mask)
        out["texture"].append(np.stack([t, t]))  # rotation-invariant LBP and symmetric GLCM: the mirror's are alike
        if n % 100 == 0:
            print(f"{n}/{len(paths)} slices, {time.time() - t0:.0f} s", flush=True)
    return save_arrays(out, CACHE)


def extract_statistics(name: str, paths: list[str], statistics) -> dict[str, np.ndarray]:
    """Per slice (twice, for the mirror: these statistics do not change under it): `statistics(img)`, cached as
    runs/screen/body_levers_<name>.npz."""
    target = CACHE.with_name(f"body_levers_{name}.npz")
    if target.exists():
        return {name: np.load(target)[name]}
    _, pre = frozen_net()
    out: dict[str, list] = {name: []}
    for path in paths:
        v = statistics(pre.load(path))
        out[name].append(np.stack([v, v]))
    return save_arrays(out, target)


def row_features(row: str, f: dict[str, np.ndarray]) -> np.ndarray | list[np.ndarray]:
    row = row.removesuffix("@512")
    if row in ("last|texture", "last|background", "last|ring"):  # two probes, their probabilities averaged
        return [f["last"], f[row.split("|")[1]]]
    if row in PARTS:
        return f["texture"][..., PARTS[row]]
    if row == "last+texture":
        return np.concatenate([f["last"], f["texture"]], -1)
    if row in ("hullpool224", "hullpool448"):
        return np.concatenate([f["last"], f[row]], -1)
    if row in f:
        return f[row]
    raise SystemExit(f"unknown row {row!r}; choose from {ROWS + SHORTCUT_ROWS}")


def pool_draws() -> Draws:
    """The default's five draws as `gpu_pack.pool_and_parts` draws them (no runs/ folders needed)."""
    pool = pool_and_parts()
    classes = sorted(set(pool["labels"]))
    return Draws(
        [str(ROOT.parent / "shared" / p) for p in pool["paths"]],
        classes,
        np.array([classes.index(lbl) for lbl in pool["labels"]]),
        np.array(pool["groups"]),
        [[np.array(p, dtype=object) for p in draw] for draw in pool["parts"]],
    )


def square_512(paths: list[str]) -> np.ndarray:
    """Which slices are 512x512 (the header only): the malignant-only sizes are a known shortcut."""
    return np.array([Image.open(p).size == (512, 512) for p in paths])


def only_where(keep: np.ndarray, draws: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """The draws' parts with every slice outside `keep` in no part (neither trained on nor tested)."""
    return [[np.where(keep, part, "") for part in draw] for draw in draws]


def main(rows: list[str]) -> None:
    d = pool_draws()
    paths, classes, y, groups = d.paths, d.classes, d.y, d.groups
    feats = extract(paths)
    keep = square_512(paths)
    if any("background" in row for row in rows):
        feats |= extract_statistics("background", paths, background_features)  # outside the body's hull
    if any("ring" in row for row in rows):
        feats |= extract_statistics("ring", paths, ring_texture)
    default = json.loads((ROOT / "benchmarks" / "results" / "feature_levers.json").read_text())["last"]
    base = np.array(default["balanced_accuracy_per_fold"])
    results = {}
    for row in rows:
        x = row_features(row, feats)
        draws = only_where(keep, d.parts) if row.endswith("@512") else d.parts
        summary = summarise_folds(*score_draws(x, None, y, groups, draws, classes))
        summary["paired_vs_default"] = (
            "not paired: 512x512 slices only"
            if row.endswith("@512")
            else paired(summary["balanced_accuracy_per_fold"], base)
        )
        results[row] = summary
        print(row, {k: v for k, v in summary.items() if k != "balanced_accuracy_per_fold"}, flush=True)
    merge_results("body_levers.json", results)


if __name__ == "__main__":
    main(sys.argv[1:] or ROWS)
