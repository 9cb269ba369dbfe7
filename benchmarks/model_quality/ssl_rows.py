"""Score the backbones `gpu_ssl.py` pretrained with the default's own probe, on the default's folds, on this machine.

Each returned checkpoint becomes a weights file shaped like the shared ImageNet file (the same keys, classifier and
metadata, the backbone replaced), so `lungct.models.classifier.create_backbone` builds it exactly as it builds the
default, and the only difference from the default's `last` row is the backbone's weights. Features of every slice
and its mirror are extracted on the CPU (cached in runs/screen/ssl/) and read by the probe as body_levers.py reads
its rows:

- `ssl_pneumonia@S`: pretrained on the pneumonia set alone for S steps; all 25 folds of the five draws;
- `ssl_fold@S`: fold k of the first draw read by the backbone pretrained on that fold's own unlabelled training and
  validation slices (plus pneumonia); 5 folds, paired against the default's first draw;
- `last|...`: the default's probe and the row's probe, their probabilities averaged;
- `air:imagenet`, `air:ssl_pneumonia@600` (with `--air`): the same backbones' features of each slice with the
  body's hull (`lungct.data.field.body_hull`) painted black, so only air, table and border remain: how much of the
  label a representation reads without any anatomy (the CNN form of the audit's background check); and
  `air:imagenet@512`, the 512x512 slices alone, so the malignant-only image sizes cannot be what it reads.

Usage: python benchmarks/model_quality/ssl_rows.py DIR [--air]
(DIR: the folder of the ssl_<job>.safetensors files gpu_ssl.py returned)
-> benchmarks/results/ssl_rows.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from body_levers import extract as default_features
from body_levers import only_where, pool_draws, square_512
from feature_levers import (
    WEIGHTS,
    frozen_net,
    merge_results,
    mirrored,
    paired,
    save_arrays,
    score_draw,
    score_draws,
    summarise_folds,
)
from oof import ROOT
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lungct.data.field import body_hull

OUT = ROOT / "runs" / "screen" / "ssl"
RESULTS = ROOT / "benchmarks" / "results" / "ssl_rows.json"


def checkpoints(path: Path) -> dict[int, dict[str, torch.Tensor]]:
    """{step: backbone state} of one returned file (keys `step<S>.<name>`, half precision)."""
    by_step: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        step, name = key.split(".", 1)
        if name != "none":
            by_step.setdefault(int(step.removeprefix("step")), {})[name] = value.float()
    return by_step


def as_weights_file(state: dict[str, torch.Tensor], target: Path, note: str) -> Path:
    """The shared ImageNet file with its backbone replaced by `state`: same keys, classifier and metadata. A file
    built on an earlier run is kept, as its cached features are (`features`): delete runs/screen/ssl to rebuild."""
    if target.exists():
        return target
    base = load_file(str(WEIGHTS))
    missing = set(base) - set(state) - {k for k in base if k.startswith("classifier.")}
    if missing or set(state) - set(base):
        raise SystemExit(f"{target.name}: the checkpoint does not fit the ImageNet file ({sorted(missing)[:3]})")
    with safe_open(str(WEIGHTS), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(base | state, str(target), metadata=meta | {"source": f"{meta['source']}; then {note}"})
    return target


def without_body(img: Image.Image) -> Image.Image:
    """The slice with its body's hull painted black: air, table and border alone."""
    grey = np.asarray(img).copy()
    grey[body_hull(img)] = 0
    return Image.fromarray(grey)


@torch.inference_mode()
def features(weights: Path, paths: list[str], air: bool = False) -> np.ndarray:
    """(n, 2, 1280) pooled features of each slice and its mirror, through the default's backbone and preprocessing
    (with `air`, of the slice without its body)."""
    cache = weights.with_name(weights.stem + ("_air" if air else "") + ".npz")
    if cache.exists():
        return np.load(cache)["last"]
    net, pre = frozen_net(weights)
    out: dict[str, list] = {"last": []}
    t0 = time.time()
    for path in paths:
        img = pre.load(path)
        out["last"].append(mirrored(net, torch.from_numpy(pre.to_array(without_body(img) if air else img))[None]))
    print(f"{cache.name}: {len(paths)} slices in {time.time() - t0:.0f} s", flush=True)
    return save_arrays(out, cache)["last"]


def summary_row(folds: list[dict], per_draw: list[float], base: np.ndarray) -> dict:
    summary = summarise_folds(folds, per_draw)
    summary["paired_vs_default"] = paired(summary["balanced_accuracy_per_fold"], base)
    return summary


def main(returned: Path, air: bool) -> None:
    d = pool_draws()
    paths, classes, y, groups, parts = d.paths, d.classes, d.y, d.groups, d.parts
    last = default_features(paths)["last"]
    default = json.loads((ROOT / "benchmarks" / "results" / "feature_levers.json").read_text())["last"]
    base = np.array(default["balanced_accuracy_per_fold"])
    imagenet = {k: v for k, v in load_file(str(WEIGHTS)).items() if not k.startswith("classifier.")}
    control = features(as_weights_file(imagenet, OUT / "imagenet_step0.safetensors", "nothing"), paths)
    if not np.allclose(control, last, atol=1e-4):  # the rebuilt file and this extraction must give the default's
        diff = np.abs(control - last).max()
        raise SystemExit(f"the unchanged weights do not reproduce the default's features (max difference {diff})")
    feats: dict[str, dict[int, np.ndarray]] = {}
    for file in sorted(returned.glob("ssl_*.safetensors")):
        job = file.stem.removeprefix("ssl_")
        for step, state in checkpoints(file).items():
            target = as_weights_file(state, OUT / f"{job}_step{step}.safetensors", f"SimCLR on CT, {job}, {step} steps")
            feats.setdefault(job, {})[step] = features(target, paths)
    results = {}
    if air:  # the rows above are in ssl_rows.json already; only the air rows are scored
        done = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # rows scored before are kept
        only_512 = only_where(square_512(paths), parts)
        for row, weights, folds in (
            ("imagenet", "imagenet_step0", parts),
            ("ssl_pneumonia@600", "pneumonia_step600", parts),
            # the malignant-only image sizes show in the air too: the 512x512 slices alone (trained and tested)
            ("imagenet@512", "imagenet_step0", only_512),
        ):
            if f"air:{row}" in done:
                continue
            x = features(OUT / f"{weights}.safetensors", paths, air=True)
            results[f"air:{row}"] = summary_row(*score_draws(x, None, y, groups, folds, classes), base)
            if row.endswith("@512"):
                results[f"air:{row}"]["paired_vs_default"] = "not paired: 512x512 slices only"
            print(f"air:{row}", {k: v for k, v in results[f"air:{row}"].items() if "per_fold" not in k}, flush=True)
        merge_results("ssl_rows.json", results)
        return
    for step, x in feats.get("pneumonia", {}).items():
        for row, members in ((f"ssl_pneumonia@{step}", x), (f"last|ssl_pneumonia@{step}", [last, x])):
            results[row] = summary_row(*score_draws(members, None, y, groups, parts, classes), base)
    steps = set.intersection(*(set(feats.get(f"fold{k}", {})) for k in range(1, 6)))
    for step in sorted(steps):
        for row, blend in ((f"ssl_fold@{step}", False), (f"last|ssl_fold@{step}", True)):
            folds = []
            for k in range(1, 6):  # fold k read by its own backbone
                x = feats[f"fold{k}"][step]
                folds += score_draw([last, x] if blend else x, None, y, groups, [parts[0][k - 1]], classes)
            draw_mean = round(float(np.mean([r["balanced_accuracy"] for r in folds])), 3)
            results[row] = summary_row(folds, [draw_mean], base)
    for row, summary in results.items():
        print(row, {k: v for k, v in summary.items() if k != "balanced_accuracy_per_fold"}, flush=True)
    merge_results("ssl_rows.json", results)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--air"]
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.exit("usage: ssl_rows.py DIR [--air]  (DIR: the folder holding gpu_ssl.py's ssl_<job>.safetensors files)")
    main(Path(args[0]), "--air" in sys.argv[1:])
