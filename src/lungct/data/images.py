"""Reading image files defensively: every failure becomes an ImageReadError naming the file and why."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
MAX_PIXELS = 64_000_000  # far above any CT slice; larger files are treated as decompression bombs


class ImageReadError(Exception):
    """An image that cannot be used; `reason` is short and human-readable."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def open_image(source, name: str | Path, color: str = "grey") -> Image.Image:
    """Decode an image from a path or file object into mode "L" (grey) or "RGB".

    Pillow does the decoding; this wrapper only turns its many failure modes into one clear error.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageReadError(name, f"image too large ({w}x{h} pixels)")
                img.load()
                if img.mode in ("I;16", "I;16B", "I", "F"):
                    img = _rescale_to_8bit(img)
                return img.convert("L" if color == "grey" else "RGB")
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(name, "image too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise ImageReadError(name, "not a readable image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(name, f"corrupt or truncated image ({exc})") from None


def load_image(path: str | Path, color: str = "grey") -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if not path.is_file():
        raise ImageReadError(path, "not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file")
    return open_image(path, path, color)


def _rescale_to_8bit(img: Image.Image) -> Image.Image:
    import numpy as np

    arr = np.asarray(img, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")
