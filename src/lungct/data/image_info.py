"""What the scan records about one image (lungct.data.scan), and what its cache (lungct.data.scan_cache) keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

THUMB_SIZE = 64


@dataclass
class ImageInfo:
    sha256: str
    width: int
    height: int
    mode: str
    format: str
    mean: float
    std: float
    thumb: np.ndarray = field(repr=False)  # zero-mean, unit-norm THUMB_SIZE**2 vector of the grey image
