"""Anomaly against normal lungs: what in a slice no normal patient's slice looks like (PatchCore-style).

Session 24's nodule candidates failed because a detector needs nodule outlines that IQ-OTH/NCCD does not have, and
hand-found opacities are mostly vessels, which normal slices carry too. An anomaly detector needs only normal slices:
it keeps the local features of every normal training slice in a memory bank and scores each patch of a new slice by
its distance to the nearest normal patch (Roth et al., "Towards total recall in industrial anomaly detection", CVPR
2022), which finds small defects with frozen ImageNet features, the one kind of weights available here. A vessel has
near neighbours among normal patches; a nodule should not.

Patches: the default's frozen MobileNetV2 on the whole slice at 224 px, its stride-8 map (blocks[2], 32 channels)
and its stride-16 map (blocks[4], 96 channels, upsampled), each averaged over 3x3 neighbours as PatchCore does and
scaled to unit mean norm, joined into 128 numbers per cell of a 28x28 grid (56x56 at 448 px). Only cells mostly
inside the body's hull (`lungct.data.field.body_hull`) are banked or scored, so air and table, which predict the
label through acquisition (docs/model-quality.md, session 22), are left out.

Honesty: a fold's bank holds the patches of its training part's normal slices only, and a slice is never scored
against its own group. To make 25 folds affordable on 2 cores, the nearest distance is computed once per (patch,
normal group) pair, and a fold takes the minimum over the normal groups its training part holds (exactly the
distance to the fold's bank, without subsampling it). Each slice's score is then summarised (max, means of the top
5 and 20 patches, 95th percentile, mean) and read by lungct's probe on each fold's training part, as
nodule_candidates.py reads its rows, paired per fold against the default's `last`. The `margin` rows add a bank of
the training part's benign slices (see fold_features).

Written with torch matrix products rather than a nearest-neighbour library (faiss, scikit-learn) because what is
needed is the minimum per (cell, group) pair, over a 292k x 116k distance matrix at 224 px (1.17M x 461k at 448 px),
in blocks that fit in memory: a few lines of torch and no index. scikit-learn's brute force would compute the same
products once per group and keep its own copies of the blocks.

Usage: [PATCH_ANOMALY_SIZE=448] python benchmarks/model_quality/patch_anomaly.py [ROW ...]
-> benchmarks/results/patch_anomaly.json (rows at 448 px are named ROW@448)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from body_levers import cell_weights, extract, pool_draws
from feature_levers import frozen_net, merge_results, paired, probe, save_arrays, summarise_folds
from oof import ROOT
from screen import fold_metrics

from lungct.data.field import body_hull
from lungct.training.probe import _proba

ROWS = ["anomaly", "last+anomaly", "last|anomaly"]
# "margin": a benign bank beside the normal one (see fold_features); patch-level nearest neighbours between the two
# classes the default confuses
MARGIN_ROWS = ["margin", "last+margin", "last|margin"]
# beside the best single-slice row of session 22 (default and texture probes averaged), as session 24 did for nodules
TEXTURE_ROWS = ["last|texture|anomaly"]
TAPS = (2, 4)  # MobileNetV2 blocks: stride 8 (32 channels) and stride 16 (96 channels)
SIZE = int(os.environ.get("PATCH_ANOMALY_SIZE", "224"))  # px the slice is resized to (the default's 224, or 448)
GRID = SIZE // 8  # cells per side of the stride-8 map
IN_BODY = 0.5  # share of a cell inside the body's hull for the cell to be banked or scored
TOP = (5, 20)
CELLS_PER_BLOCK = 2**27  # query cells x bank cells per block of distances (float32: 0.5 GB)
SUFFIX = "" if SIZE == 224 else f"_{SIZE}"
CACHE = ROOT / "runs" / "screen" / f"patch_anomaly{SUFFIX}.npz"
DISTANCES = ROOT / "runs" / "screen" / f"patch_anomaly_distances{SUFFIX}.npy"
BENIGN_DISTANCES = ROOT / "runs" / "screen" / f"patch_anomaly_benign_distances{SUFFIX}.npy"


@torch.inference_mode()
def patch_features(paths: list[str]) -> dict[str, np.ndarray]:
    """Per slice: (GRID*GRID, 128) patch features (float16) and which cells lie in the body, cached."""
    if CACHE.exists():
        z = np.load(CACHE)
        return {k: z[k] for k in z.files}
    net, pre = frozen_net()
    pre = dataclasses.replace(pre, input_size=SIZE)
    taps: dict[int, torch.Tensor] = {}
    for i in TAPS:
        net.blocks[i].register_forward_hook(lambda _m, _i, out, i=i: taps.__setitem__(i, out))
    out: dict[str, list] = {"patches": [], "body": []}
    t0 = time.time()
    for n, path in enumerate(paths):
        img = pre.load(path)
        net(torch.from_numpy(pre.to_array(img))[None])
        maps = []
        for i in TAPS:
            m = F.avg_pool2d(taps[i], 3, 1, 1, count_include_pad=False)
            maps.append(F.interpolate(m, size=(GRID, GRID), mode="bilinear", align_corners=False)[0])
        out["patches"].append(torch.cat(maps).flatten(1).T.numpy())
        out["body"].append(cell_weights(body_hull(img), GRID).ravel() > IN_BODY)
        if n % 100 == 0:
            print(f"{n}/{len(paths)} slices, {time.time() - t0:.0f} s", flush=True)
    feats = np.stack(out["patches"])
    edges = np.cumsum([0] + [taps[i].shape[1] for i in TAPS])  # each tap's channels within a cell's numbers
    for lo, hi in itertools.pairwise(edges):  # each map to unit mean norm, so neither dominates
        feats[..., lo:hi] /= np.linalg.norm(feats[..., lo:hi], axis=-1).mean()
    return save_arrays({"patches": list(feats.astype(np.float16)), "body": out["body"]}, CACHE)


@torch.inference_mode()
def group_distances(f: dict[str, np.ndarray], banks: list[np.ndarray], path: Path) -> np.ndarray:
    """(slices, cells, banks) float16: each body cell's distance to the nearest body cell of each bank's slices (one
    bank per group of a class; inf outside the body), cached at `path`. At 448 px this took 27 minutes on 2 cores,
    so the groups done so far are kept in PATH.partial.npz and a rerun goes on from there."""
    if path.exists():
        return np.load(path)
    torch.set_num_threads(2)
    body = f["body"]
    queries = torch.from_numpy(f["patches"][body].astype(np.float32))
    q2 = (queries**2).sum(1, keepdim=True)
    partial = path.with_suffix(".partial.npz")
    if partial.exists():
        z = np.load(partial)
        dist, done = z["dist"], int(z["done"])
    else:
        dist, done = np.full((*body.shape, len(banks)), np.inf, dtype=np.float16), 0
    t0 = time.time()
    for g in range(done, len(banks)):
        members = banks[g]
        bank = torch.from_numpy(f["patches"][members][body[members]].astype(np.float32))
        b2 = (bank**2).sum(1)
        rows = max(256, CELLS_PER_BLOCK // len(bank))  # one block of distances at a time, about 0.5 GB
        nearest = []
        for c in (slice(s, s + rows) for s in range(0, len(queries), rows)):
            block = queries[c] @ bank.T  # |q|^2 + |b|^2 - 2 q.b, in place: one block in memory, not three
            nearest.append(block.mul_(-2).add_(q2[c]).add_(b2).amin(1))
        dist[..., g][body] = torch.cat(nearest).clamp_min(0).sqrt().numpy()
        np.savez(partial, dist=dist, done=g + 1)
        print(f"{path.stem}: group {g + 1}/{len(banks)}, {time.time() - t0:.0f} s", flush=True)
    np.save(path, dist)
    partial.unlink()
    return dist


@dataclass
class ClassBank:
    """One class's per-group distances (`group_distances`) and its group names, in the same order."""

    dist: np.ndarray
    names: np.ndarray

    @classmethod
    def of(cls, f: dict, d, label: str, path: Path) -> ClassBank:
        mine = d.y == d.classes.index(label)
        names = np.array(sorted(set(d.groups[mine])))
        return cls(group_distances(f, [np.flatnonzero(mine & (d.groups == g)) for g in names], path), names)

    def nearest(self, groups: np.ndarray, train_groups: set | None) -> np.ndarray:
        """(slices, cells): each cell's distance to the nearest cell of the bank's groups in `train_groups` (all when
        None), never of the slice's own group."""
        allowed = groups[:, None] != self.names[None, :]
        if train_groups is not None:
            allowed &= np.isin(self.names, list(train_groups))[None, :]
        # the minimum is taken in float16, the distances' own precision, and only its result widened: converting the
        # whole (slices, cells, groups) array first cost a second copy of it per fold (0.4 GB at 448 px)
        return np.where(allowed[:, None, :], self.dist, np.float16(np.inf)).min(-1).astype(np.float32)


def summaries(cells: np.ndarray, log: bool) -> np.ndarray:
    """(slices, 1, 5): the max, the means of the TOP highest, the 95th percentile and the mean of each slice's
    body-cell scores (`cells`, inf outside the body)."""
    rows = []
    for s in cells:
        s = np.sort(s[np.isfinite(s)])[::-1]
        rows.append([s[0], s[: TOP[0]].mean(), s[: TOP[1]].mean(), np.percentile(s, 95), s.mean()])
    out = np.array(rows, dtype=np.float32)
    return (np.log(out) if log else out)[:, None, :]


def fold_features(banks: dict[str, ClassBank], groups: np.ndarray, train_groups: set | None) -> dict[str, np.ndarray]:
    """The fold's slice features: `anomaly`, the summaries of the distance to the nearest normal cell of the training
    part; `margin`, of how much nearer a benign training cell is than a normal one (per cell: the normal distance less
    the benign distance), which is high where a slice has something benign patients share and normal ones lack."""
    normal = banks["normal"].nearest(groups, train_groups)
    out = {"anomaly": summaries(normal, log=True)}
    if "benign" in banks:
        with np.errstate(invalid="ignore"):  # inf - inf outside the body, masked just below
            margin = normal - banks["benign"].nearest(groups, train_groups)
        out["margin"] = summaries(np.where(np.isfinite(normal), margin, -np.inf), log=False)
    return out


def score_fold(row: str, last: np.ndarray, feats: dict[str, np.ndarray], y, groups, part, classes) -> dict:
    train, test = part == "train", part == "test"
    name = row.split("+")[-1].split("|")[-1]
    if row in TEXTURE_ROWS:
        members = [last, feats["texture"], feats[name]]
    elif row == name:
        members = [feats[name]]
    elif "+" in row:  # one probe on both
        members = [np.concatenate([last[:, :1], feats[name]], -1)]
    else:  # "last|...": two probes, their probabilities averaged
        members = [last, feats[name]]
    fits = [probe(m[train], y[train], groups[train]) for m in members]
    p = np.mean([_proba(*fit, m[test][:, :1]) for fit, m in zip(fits, members, strict=True)], 0)
    return fold_metrics(y[test], p, groups[test], classes)


def separation(banks: dict[str, ClassBank], d) -> dict:
    """Diagnostic, not a row: each feature's max cell score against every other group (leave one group out), as a
    score of each class against normal slices (AUC)."""
    from sklearn.metrics import roc_auc_score

    normal = d.y == d.classes.index("normal")
    out = {}
    for feature, x in fold_features(banks, d.groups, None).items():
        for k, c in enumerate(d.classes):
            keep = normal | (d.y == k)
            if c != "normal":
                out[f"{feature}:{c}_vs_normal_auc"] = round(float(roc_auc_score(d.y[keep] == k, x[keep, 0, 0])), 3)
    return out


def main(rows: list[str]) -> None:
    known = ROWS + MARGIN_ROWS + TEXTURE_ROWS
    unknown = [row for row in rows if row not in known]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {known}")
    d = pool_draws()
    f = patch_features(d.paths)
    banks = {"normal": ClassBank.of(f, d, "normal", DISTANCES)}
    if any(row in MARGIN_ROWS for row in rows):
        banks["benign"] = ClassBank.of(f, d, "benign", BENIGN_DISTANCES)
    print("leave one group out:", separation(banks, d), flush=True)
    cached = extract(d.paths)
    last = cached["last"]
    default = json.loads((ROOT / "benchmarks" / "results" / "feature_levers.json").read_text())["last"]
    base = np.array(default["balanced_accuracy_per_fold"])
    per_row: dict[str, tuple[list, list]] = {row: ([], []) for row in rows}
    for parts in d.parts:
        draw_rows: dict[str, list] = {row: [] for row in rows}
        for part in parts:
            feats = fold_features(banks, d.groups, set(d.groups[part == "train"])) | {"texture": cached["texture"]}
            for row in rows:
                draw_rows[row].append(score_fold(row, last, feats, d.y, d.groups, part, d.classes))
        for row in rows:
            per_row[row][0].extend(draw_rows[row])
            per_row[row][1].append(round(float(np.mean([r["balanced_accuracy"] for r in draw_rows[row]])), 3))
            print(row, per_row[row][1][-1], flush=True)
    results = {}
    for row in rows:
        summary = summarise_folds(*per_row[row])
        summary["paired_vs_default"] = paired(summary["balanced_accuracy_per_fold"], base)
        results[row + SUFFIX.replace("_", "@")] = summary
        print(row, {k: v for k, v in summary.items() if k != "balanced_accuracy_per_fold"}, flush=True)
    merge_results("patch_anomaly.json", results)


if __name__ == "__main__":
    main(sys.argv[1:] or ROWS)
