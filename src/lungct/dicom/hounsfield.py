"""Hounsfield windows without pydicom: which HU range becomes the 0..255 grey scale a classifier sees.

DICOM slices (lungct.dicom.window) and 16-bit or float image files that store HU (lungct.data.images, with the
data's `hu_offset`) share these presets, so a slice gets the same pixels whichever way it was exported. A window is
a plain clip-and-scale of HU, written with numpy: pydicom's apply_windowing reads the window from the dataset and
keeps the stored-bits range, while here the window is chosen by the user and the output must be 8-bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from lungct.contracts import DicomWindow

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
PRESETS = {DicomWindow.lung: LUNG, DicomWindow.mediastinal: MEDIASTINAL}


def default_window(color: str, configured: str | None = None) -> str:
    """The configured window; without one, RGB models get stack3 and grey models the lung window."""
    return configured or ("stack3" if color == "rgb" else "lung")


def window_pixels(hu: np.ndarray, window: str) -> np.ndarray:
    """HxW uint8 for a preset window, HxWx3 uint8 for stack3; a KeyError for "file" (only a DICOM file has one)."""
    if window == "stack3":
        return np.stack([w.apply(hu) for w in STACK3], axis=-1)
    return PRESETS[DicomWindow(window)].apply(hu)


def pixels_to_image(arr: np.ndarray, window: str, color: str) -> Image.Image:
    """Windowed pixels as the PIL image the pipeline expects: stack3 is RGB, a single window is grey or repeated."""
    img = Image.fromarray(arr, mode="RGB" if arr.ndim == 3 else "L")
    return img if window == "stack3" else img.convert("L" if color == "grey" else "RGB")
