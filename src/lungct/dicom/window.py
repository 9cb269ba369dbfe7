"""A DICOM slice's window: a preset (lungct.dicom.hounsfield), stack3, or the file's own WindowCenter/Width, with
MONOCHROME1 shown as a viewer shows it."""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from lungct.dicom.errors import DicomError
from lungct.dicom.hounsfield import PRESETS, WINDOW_NAMES, Window, pixels_to_image, window_pixels
from lungct.dicom.read import to_hu


def file_window(ds: Dataset, name: str = "") -> Window:
    """The window stored in the file (the first, when it lists several)."""
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        raise DicomError(name, "has no WindowCenter/WindowWidth of its own; use the lung or mediastinal window")
    centre = centre[0] if isinstance(centre, MultiValue) else centre
    width = width[0] if isinstance(width, MultiValue) else width
    try:
        width, centre = float(width), float(centre)
    except (TypeError, ValueError, OverflowError):
        raise DicomError(name, "has a WindowCenter/WindowWidth that is not a number") from None
    if not (width > 0 and np.isfinite(width) and np.isfinite(centre)):
        raise DicomError(name, f"has an invalid WindowWidth ({width})")
    return Window(width, centre)


def window_hu(hu: np.ndarray, ds: Dataset, window: str = "lung", name: str = "") -> np.ndarray:
    """HxW uint8 for a single window, HxWx3 uint8 for stack3."""
    if window == "stack3":
        return window_pixels(hu, window)
    if window in PRESETS:
        out = PRESETS[window].apply(hu)
    elif window == "file":
        out = file_window(ds, name).apply(hu)
    else:
        raise DicomError(name, f"unknown window {window!r}; choose one of {', '.join(WINDOW_NAMES)}")
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":  # high values shown dark
        out = 255 - out
    return out


def to_image(ds: Dataset, window: str = "lung", color: str = "grey", name: str = "") -> Image.Image:
    """A checked dataset to the PIL image the pipeline expects: mode "L" for grey, "RGB" otherwise.

    stack3 always gives RGB (three windows as three channels); a single window in RGB repeats it.
    """
    return pixels_to_image(window_hu(to_hu(ds, name), ds, window, name), window, color)
