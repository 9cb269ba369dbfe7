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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiles = to_tiles(x, self.tile, self.stride)
        b, t = tiles.shape[:2]
        features = self.backbone(tiles.flatten(0, 1)).view(b, t, -1)
        return features.amax(1) if self.pool == "max" else features.mean(1)
