"""Explanations: Grad-CAM family heatmaps for any backbone, any layer, or a frozen/fine-tuned layer group."""

from lungct.explain.batch import BatchResult, explain_to_folder, held_out_paths
from lungct.explain.cam import METHODS, compute_cams, to_image_size
from lungct.explain.explainer import Explainer, Explanation, explain
from lungct.explain.layers import GROUPS, default_layer, layer_group, resolve_name
from lungct.explain.overlay import render_overlay, save_overlay

__all__ = [
    "GROUPS",
    "METHODS",
    "BatchResult",
    "Explainer",
    "Explanation",
    "compute_cams",
    "default_layer",
    "explain",
    "explain_to_folder",
    "held_out_paths",
    "layer_group",
    "render_overlay",
    "resolve_name",
    "save_overlay",
    "to_image_size",
]
