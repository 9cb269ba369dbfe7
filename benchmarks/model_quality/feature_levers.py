"""Feature-level levers on the default probe, scored exactly as `lungct cv` scores the default, over its five draws.

The default (probe_full_bilinear_224) fits lungct's own probe (`lungct.training.probe`: standardised features of
each training slice and its mirror, class-weighted logistic regression, C by inner group CV on the training part)
and scores each test slice once. This script keeps that fit and those parts (`fold_k/split.csv` of the five
cv folders) and changes only what the probe sees:

- `last`: the pooled last map, as the default (reproduces its cv row);
- `mid`: the stride-16 and stride-32 stages' pooled maps beside the last one (finer maps, where a few-pixel
  nodule still has a footprint);
- `blocks`: the stride-16/32 stages alone, without ImageNet's top 1280-channel expansion;
- `last+sqrt`: the power normalisation (square root) of the last map's features, a classic fix for frozen
  features dominated by a few large activations;
- `last+aug`: the probe also fitted on features of six mild affine views of each training slice (rotation,
  zoom, shift; the augmentations of `train.augment`), a feature-level form of augmentation;
- `last+448`: the pooled last maps at 224 and 448 px side by side (two scales);
- `box`, `hamming`, `blur1`, `blur2`: smoother resizes than the default's bilinear (Pillow's box and Hamming
  filters; a Gaussian blur of radius 1 or 2 source pixels before the bilinear resize). Bilinear beat bicubic
  (session 20), and many slices are speckled, so a smoother input may suit ImageNet features better;
- `bodymask`: everything outside the body's box (`lungct.data.field.body_box`, grown by its margin) set to black,
  the slice neither cropped nor rescaled: the scanner table and the air around the body go, the scale stays. The
  default's Grad-CAM maps peak on the table and the air (docs/explain.md), and the body crop, which also rescales,
  scored below the whole slice;
- `hier`: the default's probe for malignant against the rest, and a second probe fitted on the benign and normal
  training slices alone splitting the rest (its own C by inner group CV), so the benign/normal boundary gets a model
  of its own;
- `mixed`: four probes, on `last`, `blur1`, the 448 px last map and `last+sqrt`, their probabilities averaged
  (an ensemble over input renderings; three forward passes, one at 448 px);
- `last+study`: each slice's features beside the mean of its look-alike group's (its study's) features, which
  reads the test patient's other slices, as `lungct predict-series` does.

Usage: python benchmarks/model_quality/feature_levers.py [LEVER ...] -> benchmarks/results/feature_levers.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from oof import ROOT, row_dir
from PIL import Image, ImageFilter
from screen import fold_metrics

from lungct.data.preprocess import Preprocess
from lungct.data.splits import load_split
from lungct.models.classifier import create_backbone
from lungct.training.probe import _fit, _proba, best_c, choose_c

WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenetv2_100.imagenet.safetensors"
DRAWS = ["probe_full_bilinear_224"] + [f"probe_full_bilinear_folds{k}_224" for k in range(1, 5)]
FILTERS = ["box", "hamming", "blur1", "blur2", "bodymask"]
LEVERS = ["last", "mid", "blocks", "last+sqrt", "last+aug", "last+448", *FILTERS, "last+study", "hier", "mixed"]
METRICS = ["accuracy", "balanced_accuracy", "benign_recall", "malignant_recall", "normal_recall", "macro_auc", "ece"]
STUDY = ["study_balanced_accuracy", "study_benign_recall"]
# (angle in degrees, scale, shift as a fraction of the side): mild views a CT slice can take
AFFINE_VIEWS = [(-10, 1.0, 0.0), (10, 1.0, 0.0), (0, 0.9, 0.0), (0, 1.1, 0.0), (0, 1.0, 0.05), (0, 1.0, -0.05)]
CACHE = ROOT / "runs" / "screen" / "feature_levers.npz"


def frozen_net(weights: Path = WEIGHTS) -> tuple[torch.nn.Module, Preprocess]:
    """The default's frozen backbone (pooled features) and its preprocessing: whole slice, bilinear, 224 px
    (`weights`: another file of the same architecture in its place)."""
    torch.set_num_threads(2)
    backbone = create_backbone("mobilenetv2_100", str(weights))
    return backbone.module.eval(), dataclasses.replace(backbone.preprocess, crop_pct=1.0, interpolation="bilinear")


def mirrored(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """(2, d) pooled features of one input (1, 3, h, w) and its mirror image."""
    return net(torch.cat([x, x.flip(-1)])).numpy()


@torch.inference_mode()
def extract(paths: list[str]) -> dict[str, np.ndarray]:
    """Per slice: pooled features of the slice and its mirror at 224 px (last map and the stride-16/32 stages),
    the same at 448 px (last map), and the last map of the six affine views with their mirrors."""
    if CACHE.exists():
        z = np.load(CACHE)
        return {k: z[k] for k in z.files}
    net, pre = frozen_net()
    pre448 = dataclasses.replace(pre, input_size=448)
    taps: dict[int, torch.Tensor] = {}
    for i in (3, 4, 5):
        net.blocks[i].register_forward_hook(lambda _m, _i, out, i=i: taps.__setitem__(i, out))
    out: dict[str, list] = {"last": [], "blocks": [], "last448": [], "aug": []}
    t0 = time.time()
    for n, path in enumerate(paths):
        img = pre.load(path)
        x = torch.from_numpy(pre.to_array(img))[None]
        out["last"].append(mirrored(net, x))
        out["blocks"].append(torch.cat([taps[i].mean((2, 3)) for i in (3, 4, 5)], 1).numpy())
        x448 = torch.from_numpy(pre448.to_array(pre448.load(path)))[None]
        out["last448"].append(mirrored(net, x448))
        side = x.shape[-1]
        views = [
            TF.affine(x, angle=a, translate=[int(s * side), 0], scale=z, shear=[0.0], fill=-1.0)
            for a, z, s in AFFINE_VIEWS
        ]
        v = torch.cat(views)
        out["aug"].append(torch.stack([net(v), net(v.flip(-1))], 1).reshape(-1, 1280).numpy())
        if n % 100 == 0:
            print(f"{n}/{len(paths)} slices, {time.time() - t0:.0f} s", flush=True)
    return save_arrays(out, CACHE)


def save_arrays(out: dict[str, list], path: Path) -> dict[str, np.ndarray]:
    """Each list of per-slice features stacked, and cached at `path`."""
    arrays = {k: np.stack(v) for k, v in out.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


@torch.inference_mode()
def extract_filters(paths: list[str]) -> dict[str, np.ndarray]:
    """Per slice and resize variant of FILTERS: the pooled last map of the slice and its mirror at 224 px."""
    target = CACHE.with_name("feature_levers_filters.npz")
    if target.exists():
        z = np.load(target)
        if set(FILTERS) <= set(z.files):
            return {k: z[k] for k in z.files}
    net, pre = frozen_net()
    variants = {  # name: (preprocessing, a change to the decoded slice or None)
        "box": (dataclasses.replace(pre, interpolation="box"), None),
        "hamming": (dataclasses.replace(pre, interpolation="hamming"), None),
        "blur1": (pre, lambda im: im.filter(ImageFilter.GaussianBlur(1))),
        "blur2": (pre, lambda im: im.filter(ImageFilter.GaussianBlur(2))),
        "bodymask": (pre, body_mask),
    }
    cached = dict(np.load(target)) if target.exists() else {}
    out: dict[str, list] = {k: [] for k in variants if k not in cached}
    for path in paths:
        img = pre.load(path)
        for name in out:
            p, change = variants[name]
            out[name].append(mirrored(net, torch.from_numpy(p.to_array(change(img) if change else img))[None]))
    arrays = cached | {k: np.stack(v) for k, v in out.items()}
    np.savez(target, **arrays)
    return arrays


def body_mask(img: Image.Image) -> Image.Image:
    """The slice with everything outside the body's (margin-grown) box black; the same size and scale."""
    from lungct.data.field import body_box, padded_box

    box = body_box(img)
    if box is None:
        return img
    box = padded_box(box, *img.size)
    out = Image.new(img.mode, img.size)
    out.paste(img.crop(box), box[:2])
    return out


def with_study_mean(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each slice's features (n, 2, d) beside its group's mean over slices and mirrors (n, 2, 2d)."""
    out = np.empty((*x.shape[:2], 2 * x.shape[2]), dtype=x.dtype)
    for g in np.unique(groups):
        at = groups == g
        out[at] = np.concatenate([x[at], np.broadcast_to(x[at].mean((0, 1)), x[at].shape)], -1)
    return out


def lever_features(
    lever: str, f: dict[str, np.ndarray], groups: np.ndarray
) -> tuple[np.ndarray | list[np.ndarray], np.ndarray | None]:
    """(features (n, 2, d) of each slice and its mirror, or a list of them for an ensemble; extra training views
    (n, k, d) or None)."""
    if lever == "hier":
        return f["last"], None
    if lever == "mixed":  # members of an ensemble, each fitted on its own features
        return [f["last"], f["blur1"], f["last448"], np.sqrt(np.maximum(f["last"], 0))], None
    if lever == "last+study":  # groups never cross a fold's parts, so a study mean stays inside its part
        return with_study_mean(f["last"], groups), None
    if lever == "last":
        return f["last"], None
    if lever == "mid":
        return np.concatenate([f["blocks"], f["last"]], -1), None
    if lever == "blocks":
        return f["blocks"], None
    if lever == "last+sqrt":
        return np.sqrt(np.maximum(f["last"], 0)), None
    if lever == "last+aug":
        return f["last"], f["aug"]
    if lever in FILTERS:
        return f[lever], None
    if lever == "last+448":
        return np.concatenate([f["last"], f["last448"]], -1), None
    raise SystemExit(f"unknown lever {lever!r}; choose from {LEVERS}")


def probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, extra: np.ndarray | None = None):
    """lungct's probe fit (C by inner group CV as in `fit_probe`); `extra` views join the training slices after C is
    chosen."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = best_c(choose_c(x, y, list(groups), True, 42))
        return _fit(x if extra is None else np.concatenate([x, extra], 1), y, c, True)


def score_draw(x, extra, y, groups, parts, classes, hierarchical: bool = False) -> list[dict]:
    """One draw's five folds: the run's probe fitted on the training part, each test slice scored once."""
    rows = []
    for part in parts:
        train, test = part == "train", part == "test"
        members = x if isinstance(x, list) else [x]  # an ensemble: the mean of its members' probabilities
        extra_train = None if extra is None else extra[train]
        fits = [probe(m[train], y[train], groups[train], extra_train) for m in members]
        p = np.mean([_proba(*fit, m[test][:, :1]) for fit, m in zip(fits, members, strict=True)], 0)
        if hierarchical:  # benign against normal by a probe of its own, within the non-malignant mass
            b, n = classes.index("benign"), classes.index("normal")
            pair = train & np.isin(y, [b, n])
            q = _proba(*probe(x[pair], (y[pair] == b).astype(int), groups[pair]), x[test][:, :1])[:, 1]
            rest = p[:, b] + p[:, n]
            p[:, b], p[:, n] = rest * q, rest * (1 - q)
        rows.append(fold_metrics(y[test], p, groups[test], classes))
    return rows


def score_draws(x, extra, y, groups, draws, classes, hierarchical: bool = False) -> tuple[list[dict], list[float]]:
    """Every draw's folds (`score_draw`): the fold rows in draw order, and each draw's mean balanced accuracy."""
    folds, per_draw = [], []
    for parts in draws:
        rows = score_draw(x, extra, y, groups, parts, classes, hierarchical)
        folds += rows
        per_draw.append(round(float(np.mean([r["balanced_accuracy"] for r in rows])), 3))
    return folds, per_draw


def paired(per_fold: list[float], base: np.ndarray) -> str:
    """Mean ± sd of a row's per-fold balanced accuracy minus the default's on the same folds, and how many folds are
    not below it."""
    diff = np.array(per_fold) - base[: len(per_fold)]
    return f"{diff.mean():+.3f} ± {diff.std(ddof=1):.3f} ({int((diff >= 0).sum())}/{len(diff)})"


@dataclass
class Draws:
    """The default's slices in path order, their labels and groups, and each draw's five folds' part per slice."""

    paths: list[str]
    classes: list[str]
    y: np.ndarray
    groups: np.ndarray
    parts: list[list[np.ndarray]]  # [draw][fold] -> (n,) "train" / "val" / "test"


def load_draws() -> Draws:
    missing = [row for row in DRAWS if not (row_dir(row) / "fold_5" / "split.csv").is_file()]
    if missing:
        rows = " ".join(missing)
        raise SystemExit(f"no cv folds for {rows}: run benchmarks/model_quality/run_cv.sh {rows}")
    splits = [[load_split(row_dir(row) / f"fold_{k}" / "split.csv") for k in range(1, 6)] for row in DRAWS]
    items = sorted(splits[0][0], key=lambda i: str(i.path))
    paths = [str(i.path) for i in items]
    at = {p: n for n, p in enumerate(paths)}
    classes = sorted({i.label for i in items})
    parts = []
    for draw in splits:
        arrays = []
        for split in draw:
            a = np.empty(len(paths), dtype=object)
            for i in split:
                a[at[str(i.path)]] = str(i.part)
            arrays.append(a)
        parts.append(arrays)
    y = np.array([classes.index(i.label) for i in items])
    return Draws(paths, classes, y, np.array([i.group for i in items]), parts)


def main(levers: list[str]) -> None:
    d = load_draws()
    paths, classes, y, groups, part_arrays = d.paths, d.classes, d.y, d.groups, d.parts
    feats = extract(paths)
    if any(lever in FILTERS or lever == "mixed" for lever in levers):
        feats |= extract_filters(paths)
    results = {}
    for lever in levers:
        x, extra = lever_features(lever, feats, groups)
        folds, per_draw = score_draws(x, extra, y, groups, part_arrays, classes, lever == "hier")
        for row, score in zip(DRAWS, per_draw, strict=True):
            print(lever, row, score, flush=True)
        results[lever] = summarise_folds(folds, per_draw)
        print(lever, {k: v for k, v in results[lever].items() if k != "balanced_accuracy_per_fold"}, flush=True)
    merge_results("feature_levers.json", results)


def summarise_folds(folds: list[dict], per_draw: list[float]) -> dict:
    """A row of a results file: fold means, balanced accuracy per draw, its spread, and its value per fold."""
    summary = {m: round(float(np.nanmean([r[m] for r in folds])), 3) for m in METRICS + STUDY}
    summary["balanced_accuracy_per_draw"] = per_draw
    if len(per_draw) > 1:  # one draw has no spread between draws
        summary["balanced_accuracy_sd_between_draws"] = round(float(np.std(per_draw, ddof=1)), 3)
    summary["balanced_accuracy_per_fold"] = [round(r["balanced_accuracy"], 4) for r in folds]
    return summary


def merge_results(name: str, results: dict) -> None:
    """Rows into benchmarks/results/NAME, keeping the rows of earlier runs that were not rerun."""
    out = ROOT / "benchmarks" / "results" / name
    old = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**old, **results}, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:] or LEVERS)
