"""Tile pooling: a slice seen as overlapping native-resolution tiles, their features pooled.

A benign nodule is a few pixels wide once a 512 px slice is shrunk to 224 px, and a global average over the
whole slice dilutes it further. Cutting the slice into overlapping tiles at (near) native resolution, running
the backbone on each, and max-pooling the tiles' features (multiple-instance learning: a slice is positive
when any tile is) keeps a lesion that sits in one tile as strong as if it filled the slice.
"""

from __future__ import annotations

import torch
from torch import nn


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, size) with tiles of `tile` px every `stride` px, the last flush with the edge."""
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def to_tiles(x: torch.Tensor, tile: int, stride: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, T, C, tile, tile), tiles in row-major order."""
    ys, xs = tile_starts(x.shape[-2], tile, stride), tile_starts(x.shape[-1], tile, stride)
    tiles = [x[..., y : y + tile, x0 : x0 + tile] for y in ys for x0 in xs]
    return torch.stack(tiles, dim=1)


class TiledBackbone(nn.Module):
    """Wraps a pooled-feature backbone: features of every tile, pooled across tiles ("max" or "mean").

    The tiles go through the backbone as one batch, so a B-slice batch costs one call of B x T images.
    """

    def __init__(self, backbone: nn.Module, tile: int, stride: int, pool: str = "max"):
        super().__init__()
        if pool not in ("max", "mean"):
            raise ValueError("tile pool must be max or mean")
        self.backbone, self.tile, self.stride, self.pool = backbone, tile, stride, pool
        self.num_features = getattr(backbone, "num_features", None)
        self.head_hidden_size = getattr(backbone, "head_hidden_size", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiles = to_tiles(x, self.tile, self.stride)
        b, t = tiles.shape[:2]
        features = self.backbone(tiles.flatten(0, 1)).view(b, t, -1)
        return features.amax(1) if self.pool == "max" else features.mean(1)


def unwrap(backbone: nn.Module) -> nn.Module:
    """The backbone inside a TiledBackbone (itself otherwise): where timm's layer grouping and CAM layers live."""
    return backbone.backbone if isinstance(backbone, TiledBackbone) else backbone


def stitch_maps(maps: torch.Tensor, tiles: TiledBackbone, size: tuple[int, int]) -> torch.Tensor:
    """(B x T, C, h, w) feature maps of the tiles -> (B, C, H', W'): each tile's map placed where its tile lies in
    the `size` (H, W) slice, overlaps averaged. Grad-CAM then weighs one map of the whole slice, not T maps.

    A tile start that is not a multiple of the map's stride lands on the nearest cell.
    """
    (height, width), (h, w) = size, maps.shape[-2:]
    ys, xs = tile_starts(height, tiles.tile, tiles.stride), tile_starts(width, tiles.tile, tiles.stride)
    b = maps.shape[0] // (len(ys) * len(xs))
    maps = maps.reshape(b, len(ys) * len(xs), *maps.shape[1:])
    scale_y, scale_x = h / min(tiles.tile, height), w / min(tiles.tile, width)
    out_h, out_w = max(h, round(height * scale_y)), max(w, round(width * scale_x))
    canvas = maps.new_zeros(b, maps.shape[2], out_h, out_w)
    count = maps.new_zeros(1, 1, out_h, out_w)
    for t, (y, x) in enumerate((y, x) for y in ys for x in xs):
        top, left = min(round(y * scale_y), out_h - h), min(round(x * scale_x), out_w - w)
        canvas[..., top : top + h, left : left + w] += maps[:, t]
        count[..., top : top + h, left : left + w] += 1
    return canvas / count.clamp(min=1)
