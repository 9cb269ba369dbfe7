"""Backbones by name: adding one is one `register` call.

Names are lungct's; each maps to the first of its candidate timm names that the installed timm knows,
so renames across timm versions (xception -> legacy_xception) stay invisible to configs.
NASNetMobile is not in timm: the NAS-searched mobile nets offered instead are MnasNet and MobileNetV3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm
from torch import nn

from lungct.errors import LungCTError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_names: tuple[str, ...] = ()
    description: str = ""
    cam_layer: str | None = None  # default Grad-CAM target: the last convolutional block
    builder: Callable[[], nn.Module] | None = None  # for backbones that are not in timm

    def resolve_timm_name(self) -> str:
        known = set(timm.list_models())
        for candidate in self.timm_names:
            if candidate in known:
                return candidate
        raise LungCTError(f"backbone {self.name!r}: none of {self.timm_names} exists in timm {timm.__version__}")


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise LungCTError(f"unknown backbone {name!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def _small_cnn() -> nn.Module:
    from lungct.models.small_cnn import SmallCNN

    return SmallCNN()


for _spec in (
    BackboneSpec("mobilenetv2_100", ("mobilenetv2_100",), "MobileNetV2 1.0 (default)", "conv_head"),
    BackboneSpec("densenet121", ("densenet121",), "DenseNet-121", "features.norm5"),
    BackboneSpec("resnet50", ("resnet50",), "ResNet-50", "layer4"),
    BackboneSpec("resnet101", ("resnet101",), "ResNet-101", "layer4"),
    BackboneSpec("inception_v3", ("inception_v3",), "Inception v3 (299 px)", "Mixed_7c"),
    BackboneSpec("inception_resnet_v2", ("inception_resnet_v2",), "Inception-ResNet v2 (299 px)", "conv2d_7b"),
    BackboneSpec("vgg16", ("vgg16", "vgg16_bn"), "VGG-16", "features"),
    BackboneSpec("vgg19", ("vgg19", "vgg19_bn"), "VGG-19", "features"),
    BackboneSpec("xception", ("legacy_xception", "xception"), "Xception (299 px)", "conv4"),
    BackboneSpec("mnasnet_100", ("mnasnet_100",), "MnasNet 1.0 (NAS-searched mobile net)", "conv_head"),
    BackboneSpec(
        "mobilenetv3_large_100", ("mobilenetv3_large_100",), "MobileNetV3-Large (NAS-searched mobile net)", "blocks"
    ),
    BackboneSpec("small_cnn", (), "Small CNN trained from scratch (baseline)", "features", _small_cnn),
):
    register(_spec)
