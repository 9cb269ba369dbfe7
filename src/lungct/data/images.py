"""Reading image files defensively: every failure becomes an ImageReadError naming the file and why."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from lungct.errors import MissingExtraError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})
MAX_PIXELS = 64_000_000  # far above any CT slice; larger files are treated as decompression bombs
# Far below any CT slice (IQ-OTH/NCCD's are 512 px; the pneumonia set's smallest side is 123): a 1x1 image or a 4 px
# strip, stretched to the model's input, still got a confident label.
MIN_SIDE = 32
# Pillow's modes for 16-bit and 32-bit integer and float pixels: a CT export in them holds more than a display's 8 bits
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I", "F"})


class ImageReadError(Exception):
    """An image that cannot be used; `reason` is short and human-readable."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def open_image(
    source, name: str | Path, color: str = "grey", dicom_window: str | None = None, hu_offset: int | None = None
) -> Image.Image:
    """Decode an image from a path or file object into mode "L" (grey) or "RGB".

    Pillow does the decoding; this wrapper only turns its many failure modes into one clear error, and refuses
    what decodes but is no slice: one pixel or a thin strip, a stack of frames, a blank image.
    DICOM (a .dcm name or the DICM header) goes to lungct.dicom: HU, then `dicom_window` (see there).
    A 16-bit, 32-bit or float file is stretched from its darkest to its brightest pixel, unless `hu_offset` says
    it stores HU + hu_offset (1024 and 32768 are common): then it is windowed like DICOM (`hu_pixels_to_image`).
    """
    if _is_dicom(source, name):
        return _open_dicom(source, name, color, dicom_window)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageReadError(name, f"image too large ({w}x{h} pixels)")
                if min(w, h) < MIN_SIDE:
                    raise ImageReadError(name, f"image too small ({w}x{h} pixels; a slice needs {MIN_SIDE} a side)")
                frames = getattr(img, "n_frames", 1)
                if frames > 1:  # Pillow would quietly give the first frame of a stack or an animation
                    raise ImageReadError(name, f"{frames} frames in one file; give one slice per file")
                if hu_offset is not None and _deep_colour(img):
                    raise ImageReadError(
                        name,
                        "a 16-bit colour image: only its top 8 bits can be read, so hu_offset cannot apply; "
                        "save the slice as 16-bit greyscale",
                    )
                img.load()
                # A phone photo of a viewer, or an export that rotates by tag: the pixels as they are displayed.
                ImageOps.exif_transpose(img, in_place=True)
                if img.mode in HIGH_DEPTH_MODES:
                    if hu_offset is not None:
                        return hu_pixels_to_image(img, hu_offset, color, dicom_window, name)
                    img = _rescale_to_8bit(img, name)
                return _refuse_blank(img.convert("L" if color == "grey" else "RGB"), name)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(name, "image too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise ImageReadError(name, "not a readable image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(name, f"corrupt or truncated image ({exc})") from None
    except Exception as exc:  # decoders raise other types too (struct.error, IndexError, ...) for damaged files
        raise ImageReadError(name, f"corrupt or unreadable image ({type(exc).__name__})") from None


def _deep_colour(img: Image.Image) -> bool:
    """16 bits per colour channel (a 48- or 64-bit PNG or TIFF), which Pillow decodes to their top 8 bits only.

    Read as 8 bits, a slice storing HU + 1024 in three equal channels comes out nearly black (1064 -> 4) and still
    gets a label, so with `hu_offset` such a file is refused rather than guessed at.
    """
    if img.mode not in ("RGB", "RGBA"):
        return False
    for tile in img.tile:  # (codec, extents, offset, args): args starts with the raw mode, e.g. "RGB;16B"
        args = tile[3] if isinstance(tile[3], tuple) else (tile[3],)
        if args and isinstance(args[0], str) and ";16" in args[0]:
            return True
    return False


def load_image(
    path: str | Path, color: str = "grey", dicom_window: str | None = None, hu_offset: int | None = None
) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if not path.is_file():  # a folder, FIFO, device or socket: opening some of them would block for ever
        raise ImageReadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file")
    return open_image(path, path, color, dicom_window, hu_offset)


def is_dicom_file(path: str | Path) -> bool:
    """True for a DICOM file (by name or header); False for anything else, including missing files."""
    return _is_dicom(str(path), path)


def shown_path(path: str) -> str:
    """How output names a file: a DICOM file by its name only (its folders may carry the patient's name), any other
    file by its path as given."""
    return Path(path).name if is_dicom_file(path) else path


def _is_dicom(source, name: str | Path) -> bool:
    """A .dcm/.dicom name, or a DICOM Part 10 header ("DICM" at byte 128) for extensionless files."""
    from lungct.dicom.detect import DICOM_SUFFIXES, has_dicom_preamble, is_dicom_path

    if Path(str(name)).suffix.lower() in DICOM_SUFFIXES:
        return True
    if isinstance(source, (str, Path)):
        return is_dicom_path(source)  # opens regular files only: a FIFO would block the read
    if hasattr(source, "seek") and hasattr(source, "read"):
        pos = source.tell()
        head = source.read(132)
        source.seek(pos)
        return has_dicom_preamble(head)
    return False


def _open_dicom(source, name: str | Path, color: str, dicom_window: str | None) -> Image.Image:
    try:
        from lungct.dicom import DicomError, load_dicom_image
    except ModuleNotFoundError as exc:
        raise MissingExtraError("dicom", exc.name, f"reading the DICOM file {name}") from None
    try:
        image = load_dicom_image(source, name, color, dicom_window)
    except DicomError as exc:
        raise ImageReadError(name, exc.reason) from None
    except Exception as exc:  # the DICOM reader names what it knows; anything else is still an unreadable file
        raise ImageReadError(name, f"unreadable DICOM file ({type(exc).__name__})") from None
    w, h = image.size
    if min(w, h) < MIN_SIDE:  # as for image files (open_image): a 2x2 slice still got a confident label
        raise ImageReadError(name, f"image too small ({w}x{h} pixels; a slice needs {MIN_SIDE} a side)")
    return _refuse_blank(image, name)


def is_blank(img: Image.Image) -> bool:
    """One colour throughout: nothing to classify, yet the model gave a black slice "malignant" at 0.85."""
    return all(lo == hi for lo, hi in _bands(img))


def _bands(img: Image.Image) -> list[tuple]:
    extrema = img.getextrema()
    return list(extrema) if isinstance(extrema[0], tuple) else [extrema]


def _refuse_blank(img: Image.Image, name: str | Path) -> Image.Image:
    if is_blank(img):
        bands = _bands(img)
        colour = bands[0][0] if len(bands) == 1 else tuple(lo for lo, _ in bands)
        raise ImageReadError(name, f"blank image (every pixel is {colour})")
    return img


def _finite_pixels(img: Image.Image, name: str | Path):
    """float64 pixels, NaN or infinity refused (they used to become a blank slice that still got a confident label).

    float64 throughout: the span of a float32 image (e.g. -3e38..3e38) overflows float32 arithmetic.
    """
    import numpy as np

    with np.errstate(invalid="ignore"):  # a signalling NaN warns as it is widened; the check below refuses it
        arr = np.asarray(img, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ImageReadError(name, "non-finite pixel values (NaN or infinity) in a floating-point image")
    return arr


def hu_pixels_to_image(
    img: Image.Image, hu_offset: int, color: str, dicom_window: str | None, name: str | Path
) -> Image.Image:
    """A file storing HU + hu_offset, windowed as a DICOM slice of the same HU would be (lungct.dicom.hounsfield).

    Before `hu_offset` existed such files were stretched from their darkest to their brightest pixel: bone and the
    scanner's padding set the scale, so the lungs came out nearly black, unlike the lung-window slices of training.
    """
    from lungct.dicom.hounsfield import default_window, pixels_to_image, window_pixels

    hu = _finite_pixels(img, name) - hu_offset
    if hu.min() == hu.max():
        raise ImageReadError(name, f"blank image (every pixel is {hu.min() + hu_offset:g})")
    window = default_window(color, dicom_window)
    if window == "file":
        raise ImageReadError(name, "an image file has no window of its own; use the lung or mediastinal window")
    pixels = window_pixels(hu, window)
    if pixels.min() == pixels.max():  # not a blank slice: HU outside the window, most likely a wrong offset
        raise ImageReadError(
            name,
            f"no pixel inside the {window} window after subtracting hu_offset {hu_offset} "
            f"(HU {hu.min():g} to {hu.max():g}); check the data's hu_offset",
        )
    return pixels_to_image(pixels, window, color)


def _rescale_to_8bit(img: Image.Image, name: str | Path = "image") -> Image.Image:
    """A 16-bit, 32-bit integer or float image stretched to 0..255; NaN or infinite pixels are refused."""
    import numpy as np

    arr = _finite_pixels(img, name)
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        raise ImageReadError(name, f"blank image (every pixel is {lo:g})")
    scaled = (arr - lo) / (hi - lo) * 255.0
    return Image.fromarray(scaled.astype(np.uint8), mode="L")
