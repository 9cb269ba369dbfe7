"""Class activation maps with pytorch-grad-cam, and their mapping back onto the original slice."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import numpy as np
import pytorch_grad_cam.score_cam
import torch
import tqdm
from PIL import Image
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from lungct.contracts import CamMethod
from lungct.data.transforms import Preprocess
from lungct.errors import LungCTError
from lungct.models.tiles import TiledBackbone, stitch_maps

# pytorch-grad-cam class and display title of each lungct.contracts.CamMethod
METHODS = {
    CamMethod.gradcam: GradCAM,
    CamMethod.gradcampp: GradCAMPlusPlus,
    CamMethod.eigencam: EigenCAM,
    CamMethod.scorecam: ScoreCAM,
}
METHOD_TITLES = {
    CamMethod.gradcam: "Grad-CAM",
    CamMethod.gradcampp: "Grad-CAM++",
    CamMethod.eigencam: "EigenCAM",
    CamMethod.scorecam: "Score-CAM",
}
# Score-CAM draws a progress bar of its own for every image, with no switch to turn it off: under `-q`, in the server's
# log and in the app's. lungct shows one bar per batch of images where progress is wanted, so the library's is silenced.
pytorch_grad_cam.score_cam.tqdm = SimpleNamespace(tqdm=partial(tqdm.tqdm, disable=True))
SCORECAM_MAX_CHANNELS = 4096  # Score-CAM runs one forward pass per channel: groups of layers would take hours


def compute_cams(
    model: nn.Module, batch: torch.Tensor, layer_names: list[str], targets: list[int], method: str = "gradcam"
) -> np.ndarray:
    """(B, h, w) heatmaps in [0, 1] at the model input's size; several layers are averaged (each scaled first).

    The input requires grad so that gradients reach every target layer even in a frozen model.
    """
    if method not in METHODS:
        raise LungCTError(f"unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
    modules = dict(model.named_modules())
    layers = [modules[n] for n in layer_names]
    model.eval()  # BatchNorm running statistics and no dropout, as at prediction time
    tiled = next((m for m in model.modules() if isinstance(m, TiledBackbone)), None)
    size = tuple(batch.shape[-2:])
    # a tile-pooled backbone's layers see B x T tiles: their maps are stitched into one map per slice first
    stitch = None if tiled is None else (lambda maps: stitch_maps(maps, tiled, size))
    cam = METHODS[method](model=model, target_layers=layers, reshape_transform=stitch)
    if method == "scorecam":
        channels = _channels(model, layers, batch)
        if channels > SCORECAM_MAX_CHANNELS:
            cam.activations_and_grads.release()
            raise LungCTError(
                f"scorecam over {len(layers)} layers needs {channels} forward passes per image; "
                "use one layer or another method"
            )
        cam.batch_size = 64
    try:
        with torch.enable_grad():
            heat = cam(input_tensor=batch.detach().clone().requires_grad_(True), targets=_targets(targets))
        grads = cam.activations_and_grads.gradients
        if cam.uses_gradients and len(grads) != len(layers):
            raise LungCTError(f"only {len(grads)} of {len(layers)} layers received gradients; choose other layers")
    finally:
        cam.activations_and_grads.release()
    return np.nan_to_num(np.asarray(heat, dtype=np.float32)).clip(0, 1)


def _targets(classes: list[int]) -> list[ClassifierOutputTarget]:
    return [ClassifierOutputTarget(int(c)) for c in classes]


def _channels(model: nn.Module, layers: list[nn.Module], batch: torch.Tensor) -> int:
    sizes: list[int] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: sizes.append(int(out.shape[1]))) for m in layers]
    try:
        with torch.no_grad():
            model(batch[:1])
    finally:
        for h in handles:
            h.remove()
    return sum(sizes)


def crop_box(width: int, height: int, pre: Preprocess) -> tuple[float, float, float]:
    """(left, top, side) in original pixels of the square that the model saw (resize short side, centre crop).

    Mirrors torchvision's Resize(int) + CenterCrop arithmetic in `lungct.data.transforms`.
    """
    short, long = min(width, height), max(width, height)
    scale = short / pre.resize_to  # original pixels per resized pixel
    new_long = int(pre.resize_to * long / short)
    rw, rh = (pre.resize_to, new_long) if width <= height else (new_long, pre.resize_to)
    left = round((rw - pre.input_size) / 2.0)
    top = round((rh - pre.input_size) / 2.0)
    return left * scale, top * scale, pre.input_size * scale


def to_image_size(cam: np.ndarray, width: int, height: int, pre: Preprocess) -> np.ndarray:
    """Place an input-sized heatmap onto the original (height, width) slice; pixels outside the crop are 0."""
    left, top, side = crop_box(width, height, pre)
    size = max(1, round(side))
    resized = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
    out = np.zeros((height, width), dtype=np.float32)
    x0, y0 = round(left), round(top)
    sx0, sy0 = max(0, -x0), max(0, -y0)
    dx0, dy0 = max(0, x0), max(0, y0)
    w = min(width - dx0, size - sx0)
    h = min(height - dy0, size - sy0)
    if w > 0 and h > 0:
        out[dy0 : dy0 + h, dx0 : dx0 + w] = resized[sy0 : sy0 + h, sx0 : sx0 + w]
    return out.clip(0, 1)
