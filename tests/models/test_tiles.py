"""Tile pooling keeps a small lesion that sits in one tile as visible as a large one."""

from __future__ import annotations

import torch
from torch import nn

from lungct.models.tiles import TiledBackbone, tile_starts, to_tiles


class BrightSpotDetector(nn.Module):
    """A stand-in backbone with one feature: the share of a tile's pixels that are bright (a 'lesion')."""

    num_features = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] > 0.5).float().mean((1, 2, 3)).unsqueeze(1)


def _slice_with_lesion(size: int = 512, at: tuple[int, int] | None = (40, 420), radius: int = 6) -> torch.Tensor:
    img = torch.zeros(1, 3, size, size)
    if at is not None:
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        img[..., (yy - at[0]) ** 2 + (xx - at[1]) ** 2 <= radius**2] = 1.0
    return img


def test_tiles_cover_the_slice_and_reach_its_edges():
    assert tile_starts(512, 224, 144) == [0, 144, 288]
    assert tile_starts(500, 224, 144) == [0, 144, 276]
    assert tile_starts(200, 224, 144) == [0]
    assert to_tiles(torch.zeros(2, 3, 512, 512), 224, 144).shape == (2, 9, 3, 224, 224)


def test_max_tile_pooling_flags_a_lesion_in_one_tile_that_averaging_dilutes():
    detector = BrightSpotDetector()
    lesion, clean = _slice_with_lesion(), _slice_with_lesion(at=None)
    tiled = TiledBackbone(detector, 224, 144, "max")
    whole_slice = detector(lesion).item()
    one_tile = tiled(lesion).item()
    assert tiled(clean).item() == 0.0
    assert one_tile > 4 * whole_slice  # (512/224)^2 ~ 5: the lesion fills a tile ~5x more than the slice
    hits = detector(to_tiles(lesion, 224, 144).flatten(0, 1)).squeeze(1) > 0
    assert hits.sum().item() == 1 and hits[2].item()  # only the top-right tile holds it
    assert TiledBackbone(detector, 224, 144, "mean")(lesion).item() < one_tile / 4
