"""Screening: frozen MobileNetV2 feature maps of every IQ-OTH/NCCD slice, per resolution and field of view.

Cached to runs/screen/feat_<view>_<size>.npz (pooled avg/max/GeM vectors, plus the spatial map at the
largest size) so heads and pooling can be compared on the same 5 group folds in seconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from lungct.config import load_config
from lungct.crossval.folds import fold_splits, pool_from_config
from lungct.data.field import TISSUE_LEVEL, lung_field_crop
from lungct.models.classifier import create_backbone
from lungct.models.tiles import to_tiles

OUT = Path("runs/screen")


def mid_levels(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """MobileNetV2's feature maps after its stride-16 and stride-32 stages (blocks 3 to 5: 64, 96, 160
    channels) and its last map (1280): a few-pixel nodule may still show in the earlier, finer maps."""
    x = net.bn1(net.conv_stem(x))
    out = []
    for i, block in enumerate(net.blocks):
        x = block(x)
        if i in (3, 4, 5):
            out.append(x)
    return [*out, net.bn2(net.conv_head(x))]


def main(sizes: list[int], views: list[str]) -> None:
    torch.set_num_threads(2)
    cfg = load_config("configs/iqothnccd.yaml")
    pool = pool_from_config(cfg, progress=False)
    OUT.mkdir(parents=True, exist_ok=True)
    folds = fold_splits(pool, 5, cfg)
    fold_of = np.zeros(len(pool.paths), dtype=int)
    parts = np.empty((5, len(pool.paths)), dtype=object)
    for k, items in enumerate(folds):
        for i, it in enumerate(items):
            parts[k, i] = it.part
            if it.part == "test":
                fold_of[i] = k
    np.savez(
        OUT / "pool.npz",
        paths=np.array(pool.paths),
        labels=np.array(pool.labels),
        groups=np.array(pool.groups),
        fold=fold_of,
        parts=parts.astype(str),
    )
    bb = create_backbone(cfg.model.arch, cfg.model.weights, 0, "grey")
    net = bb.module.eval()
    mean = torch.tensor(bb.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.preprocess.std).view(1, 3, 1, 1)
    from PIL import Image, ImageOps

    for view in views:
        imgs = []
        for p in pool.paths:
            im = Image.open(p).convert("L")
            if view == "crop":
                im = lung_field_crop(im)
            if view == "equalize":  # Pillow's histogram equalisation over the tissue pixels: one intensity scale
                # for every acquisition, against a shortcut such as g00018's look (docs/model-quality.md)
                im = ImageOps.equalize(im, mask=im.point(lambda v: 255 if v > TISSUE_LEVEL else 0))
            # "mid": the whole slice, features of the stride-16 and stride-32 stages as well as the last map
            imgs.append(im)
        if view == "tiles":  # native 512 px, 3x3 overlapping 224 px tiles: per-tile pooled features
            target = OUT / "feat_tiles_512.npz"
            if not target.exists():
                t0 = time.time()
                feats = []
                for im in imgs:
                    x = torch.from_numpy(np.asarray(im.resize((512, 512), Image.BILINEAR), dtype=np.float32) / 255.0)
                    x = (x.expand(1, 3, 512, 512) - mean) / std
                    batch = torch.cat([x, x.flip(-1)])
                    tiles = to_tiles(batch, 224, 144)  # (2, 9, 3, 224, 224)
                    with torch.no_grad():
                        f = net.forward_features(tiles.flatten(0, 1)).mean((2, 3)).view(2, 9, -1)
                    feats.append(f.numpy())
                np.savez(target, tiles=np.stack(feats))
                print(f"tiles 512: {time.time() - t0:.0f}s", flush=True)
            continue
        for size in sizes:
            target = OUT / f"feat_{view}_{size}.npz"
            if target.exists():
                continue
            t0 = time.time()
            avg, mx, gem, maps = [], [], [], []
            for im in imgs:
                x = torch.from_numpy(np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0)
                x = x.expand(1, 3, size, size)
                x = (x - mean) / std
                batch = torch.cat([x, x.flip(-1)])
                with torch.no_grad():
                    maps_of_levels = mid_levels(net, batch) if view == "mid" else [net.forward_features(batch)]
                fm = maps_of_levels[-1]  # (2, C, h, w)
                avg.append(torch.cat([m.mean((2, 3)) for m in maps_of_levels], 1).numpy())
                mx.append(torch.cat([m.amax((2, 3)) for m in maps_of_levels], 1).numpy())
                gem.append(
                    torch.cat([m.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3) for m in maps_of_levels], 1).numpy()
                )
                if size == max(sizes) and view != "mid":
                    maps.append(fm[0].numpy().astype(np.float16))
            extra = {"maps": np.stack(maps)} if maps else {}
            np.savez(target, avg=np.stack(avg), max=np.stack(mx), gem=np.stack(gem), **extra)
            print(
                f"{view} {size}: {time.time() - t0:.0f}s ({(time.time() - t0) / len(imgs) * 1000:.0f} ms/img, 2 views)",
                flush=True,
            )


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1].split(",")], sys.argv[2].split(","))
