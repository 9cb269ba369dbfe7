"""Models: the backbone registry, weight loading and the classification head."""

from lungct.models.classifier import Backbone, CTClassifier, build_classifier, create_backbone
from lungct.models.registry import BACKBONES, BackboneSpec, get_spec, register

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "CTClassifier",
    "build_classifier",
    "create_backbone",
    "get_spec",
    "register",
]
