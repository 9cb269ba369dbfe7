"""Crop a CT slice to the patient's body so the pixels go to lung, not to table and air.

IQ-OTH/NCCD slices are windowed so that lung and much soft tissue are black: the body is not one solid
blob but ribs, spine, mediastinum and speckled muscle. So the body is the union of the tissue components
(scikit-image's connected components on a 128 px thumbnail, after a small closing), less the scanner
table: a component that is wide, flat and starts in the lower part of the slice. The union's bounding
box, grown by a margin and padded to a square around its centre (aspect kept, black outside the slice),
is the field of view. Slices where no tissue is found are returned whole.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

THUMBNAIL = 128  # px: the mask is found on a thumbnail, which is fast and ignores speckle
TISSUE_LEVEL = 20  # grey level above which a pixel is tissue (air and lung are near 0 in these windows)
MIN_COMPONENT = 0.002  # of the slice: smaller specks are noise
TABLE_TOP = 0.55  # a table starts below this fraction of the height ...
TABLE_FLATNESS = 0.4  # ... and is less tall than this fraction of its width
MARGIN = 0.04  # of the box's longer side, so the skin line is never cut


def body_box(img: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the body in `img`'s pixels, or None when no tissue is found."""
    return _box_of_body(_tissue(img), img.size)


def _tissue(img: Image.Image) -> np.ndarray:
    """Tissue pixels of the slice's thumbnail (at most THUMBNAIL px a side), after a small closing."""
    from skimage.morphology import closing, disk

    small = img.convert("L")
    small.thumbnail((THUMBNAIL, THUMBNAIL), Image.BILINEAR)
    return closing(np.asarray(small) > TISSUE_LEVEL, disk(2))


def _box_of_body(tissue: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The union box of the tissue components (specks and the table left out), in pixels of a slice of `size`."""
    from skimage.measure import label, regionprops

    height, width = tissue.shape
    boxes = []
    for region in regionprops(label(tissue)):
        if region.area < MIN_COMPONENT * tissue.size:
            continue
        top, left, bottom, right = region.bbox
        if top > TABLE_TOP * height and (bottom - top) < TABLE_FLATNESS * (right - left):
            continue  # wide, flat and low: the scanner table
        boxes.append(region.bbox)
    if not boxes:
        return None
    sx, sy = size[0] / width, size[1] / height
    top, left = min(b[0] for b in boxes), min(b[1] for b in boxes)
    bottom, right = max(b[2] for b in boxes), max(b[3] for b in boxes)
    return round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)


def padded_box(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """`box` grown by the margin on every side, within the image."""
    left, top, right, bottom = box
    pad = round(max(right - left, bottom - top) * MARGIN)
    return max(0, left - pad), max(0, top - pad), min(width, right + pad), min(height, bottom + pad)


def lung_field_crop(img: Image.Image) -> Image.Image:
    """The body on a black square (aspect kept; nothing outside the body's box, so no table), or `img` itself
    if no body is found."""
    box = body_box(img)
    if box is None:
        return img
    region = img.crop(padded_box(box, *img.size))
    side = max(region.size)
    square = Image.new(img.mode, (side, side))
    square.paste(region, ((side - region.width) // 2, (side - region.height) // 2))
    return square


def body_hull(img: Image.Image) -> np.ndarray:
    """Boolean mask (height, width) of the convex hull of the body's tissue inside its box, the table left out;
    all True when no body is found. Pixels outside it are air, the scanner table and the slice's border."""
    from skimage.morphology import convex_hull_image

    tissue = _tissue(img)
    box = _box_of_body(tissue, img.size)
    if box is None:
        return np.ones((img.height, img.width), dtype=bool)
    left, top, right, bottom = padded_box(box, *img.size)
    sx, sy = tissue.shape[1] / img.width, tissue.shape[0] / img.height
    inside = np.zeros_like(tissue)
    inside[int(top * sy) : int(np.ceil(bottom * sy)), int(left * sx) : int(np.ceil(right * sx))] = True
    hull = convex_hull_image(tissue & inside) if (tissue & inside).any() else inside
    return np.asarray(Image.fromarray(hull).resize(img.size, Image.NEAREST))
