"""Which layers a heatmap comes from: a backbone's default, named layers, or a frozen/fine-tuned group.

Names are `model.named_modules()` names of the classifier ("backbone.conv_head"); names relative to the
backbone ("conv_head", as in `BackboneSpec.cam_layer`) are accepted too. Groups follow the training
semantics of `lungct.training.freezing`: the top `train.phase2.unfreeze` parameter layers of a pretrained
backbone were fine-tuned, the rest stayed frozen; a backbone without pretrained weights trained whole.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from lungct.config import ExperimentConfig
from lungct.errors import LungCTError
from lungct.models.registry import get_spec
from lungct.training.freezing import parameter_layers, top_layer_count

GROUPS = ("frozen", "finetuned", "all")


@dataclass(frozen=True)
class LayerShape:
    calls: int
    shape: tuple[int, ...]

    @property
    def is_feature_map(self) -> bool:
        """A CAM needs one (B, C, H, W) output per forward with some spatial extent."""
        return self.calls == 1 and len(self.shape) == 4 and self.shape[-1] * self.shape[-2] > 1


def resolve_names(model: nn.Module, name: str) -> list[str]:
    """The layers `name` means: itself, the backbone's layer of that name, or, in an ensemble with one
    backbone per member, that layer in every member (their heatmaps are averaged: the ensemble's CAM)."""
    modules = dict(model.named_modules())
    members = len(getattr(model, "backbones", ()))
    if members and name not in modules:
        for inner in ("", "backbone."):  # a member's backbone, or the backbone inside its tiles
            names = [f"backbones.{i}.{inner}{name.removeprefix('backbone.')}" for i in range(members)]
            if all(n in modules for n in names):
                return names
    return [resolve_name(model, name)]


def resolve_name(model: nn.Module, name: str) -> str:
    modules = dict(model.named_modules())
    for candidate in (name, f"backbone.{name}", f"backbone.backbone.{name}"):  # the last: inside a TiledBackbone
        if candidate and candidate in modules:
            return candidate
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
    backbone = modules.get("backbone.backbone") or modules.get("backbone") or model  # the tiled one's inner net
    top = [n for n, _ in backbone.named_children()][:12]
    layers = f"the backbone's layers are {', '.join(top)}, and dotted paths below them (blocks.5)"
    hint = f"; did you mean {', '.join(close)}?" if close else f"; {layers}"
    raise LungCTError(f"unknown layer {name!r}{hint}")


def default_layers(model: nn.Module, arch: str) -> list[str]:
    spec = get_spec(arch)
    if not spec.cam_layer:
        raise LungCTError(f"backbone {arch} has no default CAM layer; pass --layer NAME")
    return resolve_names(model, spec.cam_layer)


def probe_shapes(model: nn.Module, names: list[str], input_size: int) -> dict[str, LayerShape]:
    """Output shape and call count of each named layer for one blank input.

    Hand-written hooks because pytorch-grad-cam does not validate layers: a layer that runs twice or
    outputs a vector would silently give a wrong heatmap there.
    """
    modules = dict(model.named_modules())
    seen: dict[str, list] = {n: [] for n in names}
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: seen[n].append(tuple(getattr(out, "shape", ()))))
        for n in names
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
    return {n: LayerShape(len(s), s[0] if s else ()) for n, s in seen.items()}


def check_feature_maps(model: nn.Module, names: list[str], input_size: int) -> None:
    for name, info in probe_shapes(model, names, input_size).items():
        if not info.is_feature_map:
            what = "never runs" if info.calls == 0 else f"runs {info.calls} times" if info.calls > 1 else ""
            raise LungCTError(
                f"layer {name!r} cannot be explained: "
                + (what or f"its output {info.shape} is not a spatial feature map")
            )


def finetuned_count(cfg: ExperimentConfig, pretrained: bool, total: int) -> int:
    """How many top backbone parameter layers training changed (the count `unfreeze_top` unfroze)."""
    if not pretrained:
        return total
    if cfg.train.phase2.epochs <= 0:
        return 0
    return top_layer_count(cfg.train.phase2.unfreeze, total)


def layer_group(model: nn.Module, group: str, cfg: ExperimentConfig, pretrained: bool, input_size: int) -> list[str]:
    """Names of the backbone's parameter layers in `group` that output spatial feature maps."""
    if group not in GROUPS:
        raise LungCTError(f"unknown layer group {group!r}; choose one of: {', '.join(GROUPS)}")
    if not hasattr(model, "backbone"):
        raise LungCTError(f"layer group {group!r} is not available for an ensemble; name layers with --layer")
    backbone = model.backbone
    names = {id(m): f"backbone.{n}" if n else "backbone" for n, m in backbone.named_modules()}
    layers = [names[id(m)] for m in parameter_layers(backbone)]
    n = finetuned_count(cfg, pretrained, len(layers))
    chosen = {"frozen": layers[: len(layers) - n], "finetuned": layers[len(layers) - n :], "all": layers}[group]
    shapes = probe_shapes(model, chosen, input_size)
    chosen = [name for name in chosen if shapes[name].is_feature_map]
    if not chosen:
        raise LungCTError(
            f"layer group {group!r} is empty for this run ({n} of {len(layers)} backbone layers were fine-tuned)"
        )
    return chosen
