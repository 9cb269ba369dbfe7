"""Backbone + replaceable head, and the preprocessing that the backbone and its weights call for."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import timm
import torch
from torch import nn

from lungct.config import HeadConfig, ModelConfig, TilesConfig
from lungct.data.transforms import Preprocess
from lungct.errors import LungCTError, one_line
from lungct.models.registry import get_spec
from lungct.models.tiles import TiledBackbone
from lungct.models.weights import check_weights_file, check_weights_set, normalisation_from_metadata


class CTClassifier(nn.Module):
    """Pooled backbone features -> [dropout, dense, ReLU]* -> dropout -> dense (logits; softmax outside)."""

    def __init__(self, backbone: nn.Module, num_classes: int, head: HeadConfig):
        super().__init__()
        self.backbone = backbone
        # timm's pooled output is head_hidden_size wide where a pre-logits stage exists (VGG, MobileNetV3)
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.head = self.make_head(width, num_classes, head)

    @staticmethod
    def make_head(width: int, num_classes: int, head: HeadConfig) -> nn.Sequential:
        layers: list[nn.Module] = []
        for hidden in head.hidden:
            layers += [nn.Dropout(head.dropout), nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers += [nn.Dropout(head.dropout), nn.Linear(width, num_classes)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled backbone features): what prediction, export and drift embeddings share."""
        features = self.backbone(x)
        return self.head(features), features


@dataclass
class Backbone:
    module: nn.Module
    preprocess: Preprocess
    timm_name: str
    pretrained: bool
    weights_source: str


def create_backbone(
    arch: str,
    weights: str | None,
    num_classes: int = 0,
    color: str = "grey",
    input_size: int | None = None,
    global_pool: str = "avg",
    tiles: TilesConfig | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> Backbone:
    """Build a backbone (pooled features when num_classes=0) with its weights and preprocessing.

    weights: a local file, "hub" (timm's usual download), or None (random initial weights).
    global_pool: timm's pooling of the last feature map (avg, max, avgmax, catavgmax); max keeps the signal
    of a lesion that covers a few cells of the map, which an average over the whole slice dilutes.
    tiles: run the backbone on overlapping tiles of the slice and pool across them (lungct.models.tiles).
    crop_pct: the share of the resized slice the centre crop keeps, instead of the backbone's own.
    interpolation: the resize filter, instead of the backbone's own.
    """
    spec = get_spec(arch)
    meta: dict[str, str] = {}
    if spec.builder is not None:
        if weights not in (None, "hub"):
            raise LungCTError(f"{arch} is trained from scratch and takes no --weights")
        if global_pool != "avg":
            raise LungCTError(f"{arch} pools by average only; remove model.pool")
        module, timm_name, pretrained, source = spec.builder(), arch, False, "random init (from scratch)"
    else:
        timm_name = spec.resolve_timm_name()
        kwargs: dict = {"num_classes": num_classes, "global_pool": global_pool}
        if weights is None:
            module, pretrained, source = timm.create_model(timm_name, **kwargs), False, "random init"
        elif weights == "hub":
            try:
                module = timm.create_model(timm_name, pretrained=True, **kwargs)
            except Exception as exc:  # network, hub and cache failures all surface differently
                raise LungCTError(
                    f"could not fetch {timm_name} weights from the hub ({type(exc).__name__}); "
                    "pass --weights FILE with a local copy"
                ) from exc
            pretrained, source = True, f"hub:{timm_name}"
        else:
            meta = check_weights_file(weights, timm_name)
            overlay = {"file": str(weights), "source": "timm", "num_classes": int(meta.get("num_classes", 1000))}
            try:
                module = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
            except (EOFError, pickle.UnpicklingError) as exc:  # uncaught, click reports an EOFError as an interrupt
                raise LungCTError(f"weights file {weights} is damaged or truncated ({type(exc).__name__})") from exc
            except (RuntimeError, KeyError, ValueError, OSError) as exc:
                reason = one_line(exc)
                raise LungCTError(f"weights file {weights} does not fit {timm_name}: {reason}") from exc
            check_weights_set(module, weights, timm_name)
            pretrained, source = True, f"file:{weights}"
    cfg = timm.data.resolve_model_data_config(module)
    norm = normalisation_from_metadata(meta)
    preprocess = Preprocess(
        input_size=input_size or int(cfg["input_size"][-1]),
        mean=tuple(norm.get("mean", cfg["mean"])),
        std=tuple(norm.get("std", cfg["std"])),
        interpolation=interpolation or cfg.get("interpolation", "bilinear"),
        crop_pct=float(crop_pct if crop_pct is not None else cfg.get("crop_pct", 1.0)),
        color=color,
    )
    if tiles is not None:
        module = TiledBackbone(module, tiles.size, tiles.stride, tiles.pool)
    return Backbone(module, preprocess, timm_name, pretrained, source)


def build_classifier(cfg: ModelConfig, num_classes: int, color: str = "grey") -> tuple[CTClassifier, Backbone]:
    backbone = create_backbone(
        cfg.arch, cfg.weights, 0, color, cfg.input_size, cfg.pool, cfg.tiles, cfg.crop_pct, cfg.interpolation
    )
    return CTClassifier(backbone.module, num_classes, cfg.head), backbone
