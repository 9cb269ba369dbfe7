"""Overlay PNGs: the original slice in grey, the heatmap in a colour map, and a legend naming the class.

The PNG is bounded whatever the slice's shape: its width and height are at most `max_side` pixels
(MAX_SIDE by default; the API's explain_max_side setting). The slice and heatmap are shrunk to that size
before anything is drawn, the figure is sized to fit, and a last resize catches what the legend adds, so a
20 x 20000 upload costs no more than a square one.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no global state, safe in the REST service's threads
from matplotlib.patches import Rectangle
from PIL import Image

from lungct.data.scan import printable_path
from lungct.data.transforms import Preprocess
from lungct.explain.cam import METHOD_TITLES, crop_box
from lungct.explain.explainer import Explanation
from lungct.explain.layers import GROUPS

COLORMAP = "jet"
MAX_SIDE = 1024  # pixels: the largest width or height of an overlay PNG
FIGURE_INCHES = 6.0  # the slice's panel; the colour bar, legend and title come on top
MAX_ASPECT = 1.5  # the panel's height / width is kept within [1 / MAX_ASPECT, MAX_ASPECT]; the slice keeps its own
MIN_DPI = 50  # below this the legend's text cannot be drawn; a smaller max_side is met by shrinking the PNG


def display_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down, keeping the aspect ratio, so that neither is over max_side (never up)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink(image: Image.Image, heatmap: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The grey slice and its heatmap at display size (box filter: a fair average when shrinking a lot)."""
    grey = image.convert("L")
    size = display_size(grey.width, grey.height, max_side)
    if size != grey.size:
        grey = grey.resize(size, Image.BOX)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != (size[1], size[0]):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.BOX))
    return np.asarray(grey), np.clip(heat, 0, 1)


def _fit_png(png: bytes, max_side: int) -> bytes:
    """The PNG itself when within max_side, else shrunk to fit (the tight bounding box can add the legend)."""
    with Image.open(io.BytesIO(png)) as img:
        if max(img.size) <= max_side:
            return png
        img.thumbnail((max_side, max_side), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()


def render_overlay(
    explanation: Explanation,
    preprocess: Preprocess | None = None,
    alpha: float = 0.45,
    cmap: str = COLORMAP,
    max_side: int = MAX_SIDE,
) -> bytes:
    """PNG bytes at most max_side x max_side: slice + heatmap + colour bar + legend; a dashed box marks the
    crop when the model saw less."""
    if explanation.image is None:
        raise ValueError("the explanation carries no image to draw on")
    max_side = max(1, int(max_side))
    w, h = explanation.image.size  # the original slice's size, which crop_box works in
    grey, heat = _shrink(explanation.image, explanation.heatmap, max_side)
    dh, dw = grey.shape
    aspect = min(max(dh / dw, 1 / MAX_ASPECT), MAX_ASPECT)
    fig_w, fig_h = FIGURE_INCHES * 1.25, FIGURE_INCHES * aspect + 0.9
    dpi = max(MIN_DPI, min(max(100, round(min(dw, MAX_SIDE) / FIGURE_INCHES)), max_side / max(fig_w, fig_h)))
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.subplots()
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # draw at display size, in the original slice's coordinates
    ax.imshow(grey, cmap="gray", vmin=0, vmax=255, extent=extent)
    im = ax.imshow(heat, cmap=cmap, vmin=0, vmax=1, alpha=alpha, extent=extent)
    if preprocess is not None:
        left, top, side = crop_box(w, h, preprocess)
        if left > 0.5 or top > 0.5:
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, ls="--", lw=1, ec="white"))
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
    title = printable_path(Path(explanation.path).name) if explanation.path else ""  # matplotlib takes text only
    ax.set_title(f"{title}\nlayer: {layers}", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return _fit_png(buf.getvalue(), max_side)


def save_overlay(
    explanation: Explanation, path: Path, preprocess: Preprocess | None = None, max_side: int = MAX_SIDE
) -> None:
    path.write_bytes(render_overlay(explanation, preprocess, max_side=max_side))
