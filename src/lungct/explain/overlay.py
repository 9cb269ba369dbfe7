"""Overlay PNGs: the original slice in grey, the heatmap in a colour map, and a legend naming the class."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no global state, safe in the REST service's threads
from matplotlib.patches import Rectangle

from lungct.data.transforms import Preprocess
from lungct.explain.cam import METHOD_TITLES, crop_box
from lungct.explain.explainer import Explanation
from lungct.explain.layers import GROUPS

COLORMAP = "jet"


def render_overlay(
    explanation: Explanation, preprocess: Preprocess | None = None, alpha: float = 0.45, cmap: str = COLORMAP
) -> bytes:
    """PNG bytes: slice + heatmap + colour bar + legend; a dashed box marks the crop when the model saw less."""
    if explanation.image is None:
        raise ValueError("the explanation carries no image to draw on")
    grey = np.asarray(explanation.image.convert("L"))
    h, w = grey.shape
    inches = 6.0
    fig = Figure(figsize=(inches * 1.25, inches * h / w + 0.9), dpi=max(100, round(min(w, 1024) / inches)))
    ax = fig.subplots()
    ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
    im = ax.imshow(explanation.heatmap, cmap=cmap, vmin=0, vmax=1, alpha=alpha)
    if preprocess is not None:
        left, top, side = crop_box(w, h, preprocess)
        if left > 0.5 or top > 0.5:
            ax.add_patch(Rectangle((left, top), side, side, fill=False, ls="--", lw=1, ec="white"))
    ax.set_axis_off()
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(f"{METHOD_TITLES.get(explanation.method, explanation.method)} relevance")
    lines = [
        f"explained: {explanation.label}  p={explanation.probability:.2f}",
        f"predicted: {explanation.predicted}",
        "  ".join(f"{c} {p:.2f}" for c, p in explanation.probabilities.items()),
    ]
    ax.text(
        0.0,
        -0.01,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        ha="left",
        fontsize=9,
        color="black",
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
    )
    layers = explanation.layer_spec
    if layers in GROUPS:
        layers = f"{layers} layers ({len(explanation.layers)}, averaged)"
    elif layers == "default":
        layers = explanation.layers[0].removeprefix("backbone.")
    title = Path(explanation.path).name if explanation.path else ""
    ax.set_title(f"{title}\nlayer: {layers}", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def save_overlay(explanation: Explanation, path: Path, preprocess: Preprocess | None = None) -> None:
    path.write_bytes(render_overlay(explanation, preprocess))
