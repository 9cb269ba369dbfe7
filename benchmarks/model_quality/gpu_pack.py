"""Pack what `gpu_finetune.py` needs onto a machine that has a GPU but not ../shared: the default's five fold draws
and the slices at 224 and 448 px.

A GPU machine is reached with a copy of the checkout, not of ../shared, and the 55 MB of JPEGs plus the weights
make a large copy. So the slices are decoded and resized here by the default's own preprocessing (`Preprocess`: whole
slice, bilinear, grey), stored as raw uint8 compressed with lzma (9 MB at 224 px, 30 MB at 448 px), and the fold
draws come from `lungct.crossval.folds.plan_folds` on the five configs the default's cv rows were run with, so every
fine-tuned fold is tested on exactly the slices the default's fold was.

With `--ssl` it packs what `gpu_ssl.py` needs instead: the slices at 224 px only, plus the 1019 images of the
pneumonia CT set (unlabelled material for self-supervised pretraining that shares no patient or scanner with
IQ-OTH/NCCD), each padded to a square with black before the resize, since they are wide article figures whose
centre crop would cut off the lungs' sides.

Usage: python benchmarks/model_quality/gpu_pack.py [--ssl] [OUT]  (default: .gpu/, or .gpu_ssl/ with --ssl; both
are git-ignored: carry it to the GPU machine.) Nothing here is committed: OUT holds a copy of shared data for one run
and is deleted afterwards.
"""

from __future__ import annotations

import json
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np
from oof import ROOT
from PIL import ImageOps

from lungct.config import load_config
from lungct.crossval.folds import plan_folds
from lungct.data.preprocess import Preprocess

DRAWS = ["probe_full_bilinear_224"] + [f"probe_full_bilinear_folds{k}_224" for k in range(1, 5)]
SIZES = (224, 448)
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenetv2_100.imagenet.safetensors"
PNEUMONIA = ROOT.parent / "shared" / "datasets" / "ct-pneumonia" / "Pneumonia"


def pool_and_parts() -> dict:
    """Slices in path order, with label, group and, per draw and fold, the part ("train", "val", "test")."""
    plans = [plan_folds(load_config(ROOT / "configs" / "model_quality" / f"{row}.yaml"), 5, False) for row in DRAWS]
    paths = sorted(plans[0].pool.paths)
    at = {p: n for n, p in enumerate(paths)}
    first = {i.path: i for i in plans[0].splits[0]}
    parts = []
    for plan in plans:
        if sorted(plan.pool.paths) != paths:
            raise SystemExit("the five draws do not fold over the same slices")
        draw = []
        for split in plan.splits:
            a = [""] * len(paths)
            for item in split:
                a[at[item.path]] = str(item.part)
            draw.append(a)
        parts.append(draw)
    return {
        "draws": DRAWS,
        "paths": [str(Path(p).relative_to(ROOT.parent / "shared")) for p in paths],
        "labels": [first[p].label for p in paths],
        "groups": [first[p].group for p in paths],
        "parts": parts,
        "sizes": list(SIZES),
    }


def default_preprocess(size: int) -> Preprocess:
    """The default's preprocessing (whole slice, bilinear, grey) at `size` px."""
    return Preprocess(input_size=size, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0)


def padded_square(img):
    """The image centred on a black square as wide as its longest side."""
    return ImageOps.pad(img, (max(img.size),) * 2, color=0)


def write_pixels(out: Path, name: str, pixels: np.ndarray, size: int) -> None:
    if pixels.dtype != np.uint8 or pixels.shape[1:] != (size, size):
        raise SystemExit(f"unexpected {name}: {pixels.dtype} {pixels.shape}")
    (out / f"{name}.u8.xz").write_bytes(lzma.compress(pixels.tobytes(), preset=6))
    print(f"{name}: {pixels.shape}", flush=True)


def main(out: Path, ssl: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pool = pool_and_parts()
    if ssl:
        pool["sizes"] = [224]
    shared = ROOT.parent / "shared"
    for size in pool["sizes"]:
        pre = default_preprocess(size)
        pixels = np.stack([np.asarray(pre.resized_crop(pre.load(shared / p))) for p in pool["paths"]])
        write_pixels(out, f"x{size}", pixels, size)
    if ssl:
        pre = default_preprocess(224)
        files = sorted(PNEUMONIA.glob("*.jpg"))
        pixels = np.stack([np.asarray(pre.resized_crop(padded_square(pre.load(f)))) for f in files])
        write_pixels(out, "pneumonia224", pixels, 224)
        pool["pneumonia"] = len(files)
    (out / "pool.json").write_text(json.dumps(pool))
    shutil.copyfile(WEIGHTS, out / WEIGHTS.name)
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {total / 2**20:.1f} MiB", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--ssl"]
    ssl = "--ssl" in sys.argv[1:]
    main(Path(args[0]) if args else ROOT / (".gpu_ssl" if ssl else ".gpu"), ssl)
