"""Explanations: Grad-CAM family heatmaps for any backbone, any layer, or a frozen/fine-tuned layer group."""

import lazy_loader

# Submodules load on first use, so `lungct --help` and light commands never pay for torch.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "batch": ["BatchResult", "explain_to_folder", "held_out_paths"],
        "cam": ["METHODS", "compute_cams", "to_image_size"],
        "explainer": ["Explainer", "Explanation", "explain"],
        "layers": ["GROUPS", "default_layers", "layer_group", "resolve_name", "resolve_names"],
        "overlay": ["render_overlay", "save_overlay"],
    },
)
