"""Hounsfield windows: which HU range becomes the 0..255 grey scale a classifier sees.

A window is a plain clip-and-scale of HU (written with numpy: pydicom's apply_windowing reads the
window from the dataset and keeps the stored-bits range, while here the window is chosen by the user
and the output must be 8-bit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from lungct.contracts import DicomWindow
from lungct.dicom.errors import DicomError
from lungct.dicom.read import to_hu

WINDOW_NAMES: tuple[str, ...] = tuple(DicomWindow)  # lungct.contracts.DicomWindow is the one list


@dataclass(frozen=True)
class Window:
    width: float
    level: float  # the centre, in HU

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """HU to uint8: level - width/2 -> 0, level + width/2 -> 255, linear between (rounded half up)."""
        lo = self.level - self.width / 2.0
        scaled = np.clip((hu.astype(np.float64) - lo) / self.width, 0.0, 1.0) * 255.0
        return np.floor(scaled + 0.5).astype(np.uint8)


LUNG = Window(1500, -600)
MEDIASTINAL = Window(350, 50)
BONE = Window(1800, 400)
STACK3 = (LUNG, MEDIASTINAL, BONE)  # the three channels of "stack3": lung, mediastinal, bone


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
        return np.stack([w.apply(hu) for w in STACK3], axis=-1)
    chosen = {DicomWindow.lung: LUNG, DicomWindow.mediastinal: MEDIASTINAL}.get(window)
    if chosen is None:
        if window != "file":
            raise DicomError(name, f"unknown window {window!r}; choose one of {', '.join(WINDOW_NAMES)}")
        chosen = file_window(ds, name)
    out = chosen.apply(hu)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":  # high values shown dark
        out = 255 - out
    return out


def default_window(color: str, configured: str | None = None) -> str:
    """The configured window; without one, RGB models get stack3 and grey models the lung window."""
    return configured or ("stack3" if color == "rgb" else "lung")


def to_image(ds: Dataset, window: str = "lung", color: str = "grey", name: str = "") -> Image.Image:
    """A checked dataset to the PIL image the pipeline expects: mode "L" for grey, "RGB" otherwise.

    stack3 always gives RGB (three windows as three channels); a single window in RGB repeats it.
    """
    arr = window_hu(to_hu(ds, name), ds, window, name)
    img = Image.fromarray(arr, mode="RGB" if arr.ndim == 3 else "L")
    if window == "stack3":
        return img
    return img.convert("L" if color == "grey" else "RGB")
