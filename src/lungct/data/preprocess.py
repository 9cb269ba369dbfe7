"""What a model expects of its input, and that input made with Pillow and numpy alone (no torch).

`Preprocess` is the single source of truth for input size and normalisation (resolved from the backbone's
pretrained config and the weights' own metadata, then saved with the run in model.json), so training,
evaluation, prediction and serving can never disagree about it.

`Preprocess.to_array` is the evaluation pipeline of lungct.data.transforms (torchvision v2: Resize of the short
side, CenterCrop, RGB, ToDtype with scaling, Normalize) written with the same Pillow calls torchvision makes
on a PIL image, so the torch-free server (`pip install lungct[serve]`) feeds ONNX Runtime the same numbers:
tests/data/test_preprocess.py holds the two within 1e-5 per pixel on real slices. Training keeps
torchvision for its augmentations.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from lungct.data.images import ImageReadError, load_image, open_image

# torchvision's InterpolationMode values -> Pillow's filters (torchvision.transforms.functional.pil_modes_mapping)
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    color: str = "grey"
    dicom_window: str | None = None  # lungct.dicom window; None (older runs): lung, or stack3 for rgb
    field: str = "full"  # full: the whole slice; body: cropped to the body first (lungct.data.field)
    hu_offset: int | None = None  # 16-bit/float files store HU + hu_offset (windowed); None: stretched (older runs)

    @property
    def resize_to(self) -> int:
        return round(self.input_size / self.crop_pct)

    def load(self, path: str | Path) -> Image.Image:
        """Decode a file as this model sees it (grey/RGB, DICOM window): the one place callers get that from."""
        return self.apply_field(load_image(path, self.color, self.dicom_window, self.hu_offset))

    def load_bytes(self, data: bytes, name: str = "upload") -> Image.Image:
        """Decode uploaded bytes (API, app) exactly as `load` decodes a file; `name` only labels errors."""
        if not data:
            raise ImageReadError(name, "empty file")
        return self.apply_field(open_image(io.BytesIO(data), name, self.color, self.dicom_window, self.hu_offset))

    def apply_field(self, img: Image.Image) -> Image.Image:
        """The slice as the model sees it before resizing: whole, or cropped to the body."""
        if self.field == "body":
            from lungct.data.field import lung_field_crop  # scikit-image: only runs that crop need it

            return lung_field_crop(img)
        return img

    def resize(self, img: Image.Image) -> Image.Image:
        """The short side to `resize_to`, keeping the aspect ratio (torchvision's Resize(int) on a PIL image)."""
        size = self._resized_size(*img.size)
        if size == img.size:
            return img
        return img.resize(size, resample=self._filter)

    def _resized_size(self, w: int, h: int) -> tuple[int, int]:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize_to, int(self.resize_to * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)

    @property
    def _filter(self) -> Image.Resampling:
        return PIL_FILTERS.get(self.interpolation, Image.Resampling.BILINEAR)

    def resized_crop(self, img: Image.Image) -> Image.Image:
        """`center_crop(resize(img))`, computing only the pixels the crop keeps where that gives the same pixels.

        Pillow's `resize(box=...)` maps output pixel x to source centre box[0] + (x + 0.5) * scale and reads
        filter support beyond the box, so resizing just the crop's source region equals cropping the whole
        resized image whenever that arithmetic is exact: when both scale factors are multiples of 1/1024 (a
        512 px slice to 256 px: 2). That is 40% less resampling work on the served path (a 224 px crop of a 256 px
        resize), which the server pays per request; other sizes take the two-step path.
        """
        w, h = img.size
        nw, nh = self._resized_size(w, h)
        side = self.input_size
        sx, sy = w / nw, h / nh
        if (nw, nh) == (w, h) or side > nw or side > nh or not (_dyadic(sx) and _dyadic(sy)):
            return self.center_crop(self.resize(img))
        left, top = self._crop_origin(nw, nh)
        box = (left * sx, top * sy, (left + side) * sx, (top + side) * sy)
        return img.resize((side, side), resample=self._filter, box=box)

    def center_crop(self, img: Image.Image) -> Image.Image:
        """The central input_size square (torchvision's CenterCrop: zero padding first when the image is smaller)."""
        side = self.input_size
        w, h = img.size
        if side > w or side > h:
            padded = Image.new(img.mode, (max(w, side), max(h, side)))
            padded.paste(img, ((max(w, side) - w) // 2, (max(h, side) - h) // 2))
            img, (w, h) = padded, padded.size
        left, top = self._crop_origin(w, h)
        return img.crop((left, top, left + side, top + side))

    def _crop_origin(self, w: int, h: int) -> tuple[int, int]:
        """Left and top of the central input_size square in a w x h image (torchvision's CenterCrop rounding)."""
        return round((w - self.input_size) / 2.0), round((h - self.input_size) / 2.0)

    def to_array(self, img: Image.Image) -> np.ndarray:
        """A decoded slice as the model's input: float32, 3 x input_size x input_size, normalised."""
        square = self.resized_crop(img)
        lut = self._lookup
        if square.mode == "L":  # grey CT: the three channels of each pixel looked up at once
            return np.take(lut, np.asarray(square), axis=1)
        pixels = np.asarray(square.convert("RGB"))
        return np.stack([np.take(lut[c], pixels[..., c]) for c in range(3)])

    @cached_property
    def _lookup(self) -> np.ndarray:
        """3 x 256: the normalised float32 value of each 8-bit pixel value per channel.

        It is ToDtype's scaling and Normalize done once for the 256 possible values with the same float32
        operations, so a lookup gives the very numbers the per-pixel arithmetic gives, at a third of its cost in
        the server's decode path.
        """
        values = np.arange(256, dtype=np.float32)[None, :] * np.float32(1 / 255)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None]
        lut = (values - mean) / std
        lut.flags.writeable = False
        return lut

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            int(d["input_size"]),
            tuple(d["mean"]),
            tuple(d["std"]),
            d.get("interpolation", "bilinear"),
            float(d.get("crop_pct", 1.0)),
            d.get("color", "grey"),
            d.get("dicom_window"),
            d.get("field", "full"),
            None if d.get("hu_offset") is None else int(d["hu_offset"]),
        )


def _dyadic(scale: float) -> bool:
    """True when `scale` is a multiple of 1/1024, so Pillow's centre arithmetic on it is exact in floating point."""
    return (scale * 1024).is_integer()
