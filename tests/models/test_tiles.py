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


def test_stitching_places_each_tile_map_where_its_tile_lies_and_averages_overlaps():
    from lungct.models.tiles import stitch_maps

    tiled = TiledBackbone(BrightSpotDetector(), 64, 32)  # a 96 px slice: tiles at 0 and 32 on each axis
    maps = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()  # tile t: all t
    canvas = stitch_maps(maps, tiled, (96, 96))
    assert canvas.shape == (1, 1, 3, 3)  # 2 cells per 64 px tile: 3 cells across the slice
    assert canvas[0, 0, 0, 0] == 0 and canvas[0, 0, 0, 2] == 1 and canvas[0, 0, 2, 0] == 2 and canvas[0, 0, 2, 2] == 3
    assert canvas[0, 0, 1, 1] == 1.5  # the centre cell lies in all four tiles: their mean
    one = torch.rand(2, 5, 7, 7)
    assert torch.equal(stitch_maps(one, TiledBackbone(BrightSpotDetector(), 224, 144), (200, 200)), one)


def test_a_tile_pooled_run_trains_predicts_exports_and_explains(tmp_path, fake_pretrained):
    """End to end on tiny data: the tiles travel in model.json, so every command rebuilds the same model."""
    import json

    import numpy as np
    from PIL import Image

    from lungct.config import TilesConfig
    from lungct.evaluation.evaluate import evaluate
    from lungct.explain import Explainer
    from lungct.export import export_onnx
    from lungct.inference import Predictor
    from lungct.run import RunDir, load_model
    from lungct.training import train
    from tests.conftest import tiny_config, write_dataset

    cfg = tiny_config(write_dataset(tmp_path / "data", per_class=6), fake_pretrained, layer_decay=0.8)
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 1
    cfg.model.input_size = 96
    cfg.model.tiles = TilesConfig(size=64, stride=32, pool="max")
    run = train(cfg, tmp_path / "run", progress=False)
    card = json.loads(run.model_json.read_text())
    assert card["tiles"] == {"size": 64, "stride": 32, "pool": "max"}
    model, _ = load_model(RunDir(run.path))
    assert isinstance(model.backbone, TiledBackbone)
    assert evaluate(run.path, tmp_path / "eval", progress=False)["n"] > 0
    report = export_onnx(run.path)  # refuses a graph that disagrees with PyTorch
    assert Predictor(run.path, backend="onnx").predict_paths_array(
        [next((tmp_path / "data" / "Normal cases").iterdir())]
    ).shape == (1, 3)
    assert report["check"]["max_abs_diff"]["probabilities"] <= report["check"]["bounds"]["probabilities"]
    img = Image.open(next((tmp_path / "data" / "Bengin cases").iterdir()))
    (explanation,) = Explainer(run.path).explain_images([img])
    assert explanation.heatmap.shape == (img.height, img.width)
    assert np.ptp(explanation.heatmap) > 0  # a map of the whole slice, not one constant
    assert explanation.layers == ["backbone.backbone.conv_head"]
