"""A DICOM file as the PIL image the rest of lungct uses: the hook behind lungct.data.images."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from PIL import Image

from lungct.dicom.errors import DicomError
from lungct.dicom.hounsfield import default_window
from lungct.dicom.read import read_dataset
from lungct.dicom.window import to_image


def load_dicom_image(
    source: str | Path | bytes | BinaryIO,
    name: str | Path,
    color: str = "grey",
    window: str | None = None,
    force: bool = False,
) -> Image.Image:
    """Read, convert to HU and window one slice; mode "L" for grey, "RGB" for rgb or stack3.

    window None: stack3 for color "rgb" (three windows are the meaningful three channels of CT),
    the lung window (W1500/L-600) for grey.
    """
    ds = read_dataset(source, name, force)
    try:
        return to_image(ds, default_window(color, window), color, str(name))
    except DicomError:
        raise
    except Exception as exc:  # a value that passed the checks but still breaks windowing: still the file's fault
        raise DicomError(name, f"the pixel data cannot be converted to an image ({type(exc).__name__})") from None
