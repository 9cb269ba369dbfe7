"""Fuzzing the image and DICOM readers with Hypothesis: mutated bytes of real files (byte flips, overwrites,
truncations, insertions, deletions) either decode to a usable image or raise the readers' own error
(ImageReadError / a LungCTError) with a one-line reason, never anything else.

Deterministic (derandomize=True, no example database): every run tries the same inputs, at least 2,000 per
reader. tests/serve/test_serve_reader_fuzz.py sends the same kind of inputs through the API.
"""

from __future__ import annotations

import io
from functools import cache

import numpy as np
import pydicom.examples
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from lungct.data.images import ImageReadError, open_image
from lungct.dicom import load_dicom_image
from lungct.errors import LungCTError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every invalid value

EXAMPLES = 2000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # a fixed seed: the same inputs on every run and machine
    database=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking time when a failure is found: the input is printed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _slice(size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy * 7 + xx * 3) % 256).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@cache
def image_bases() -> dict[str, bytes]:
    """Small real files of every format the image reader takes (the 16-bit and float TIFFs take the rescaling path)."""
    grey = Image.fromarray(_slice(), mode="L")
    return {
        "slice.png": _encode(grey, "PNG"),
        "slice.jpg": _encode(grey, "JPEG", quality=90),
        "slice.tif": _encode(grey, "TIFF"),
        "deflate.tif": _encode(grey, "TIFF", compression="tiff_adobe_deflate"),
        "deep.tif": _encode(Image.fromarray(_slice().astype(np.uint16) * 200), "TIFF"),
        "float.tif": _encode(Image.fromarray(_slice().astype(np.float32) / 7, mode="F"), "TIFF"),
        "slice.bmp": _encode(grey, "BMP"),
        "rgb.png": _encode(grey.convert("RGB"), "PNG"),
    }


@cache
def dicom_base() -> bytes:
    """pydicom's bundled CT slice (CT_small.dcm, 128 x 128, 16-bit)."""
    with open(pydicom.examples.get_path("ct"), "rb") as fh:
        return fh.read()


# A position near the start (where headers, tags and lengths are) or anywhere in the file.
_POSITION = st.one_of(st.integers(0, 600), st.integers(0, 1 << 20))
MUTATION = st.one_of(
    st.tuples(st.just("flip"), _POSITION, st.integers(0, 7)),
    st.tuples(st.just("set"), _POSITION, st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF])),
    st.tuples(st.just("truncate"), _POSITION, st.just(0)),
    st.tuples(st.just("insert"), _POSITION, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), _POSITION, st.integers(1, 64)),
)
MUTATIONS = st.lists(MUTATION, min_size=1, max_size=4)


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    out = bytearray(data)
    for kind, position, arg in mutations:
        if not out:
            break
        at = position % len(out)
        if kind == "flip":
            out[at] ^= 1 << arg
        elif kind == "set":
            out[at] = arg
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = arg
        else:
            del out[at : at + arg]
    return bytes(out)


def mutated_images() -> st.SearchStrategy[tuple[str, bytes]]:
    names = sorted(image_bases())
    return st.tuples(st.sampled_from(names), MUTATIONS).map(lambda t: (t[0], mutate(image_bases()[t[0]], t[1])))


def mutated_dicoms() -> st.SearchStrategy[bytes]:
    return MUTATIONS.map(lambda m: mutate(dicom_base(), m))


def _check_image(img: Image.Image, mode: str) -> None:
    assert isinstance(img, Image.Image) and img.mode == mode
    assert img.width >= 1 and img.height >= 1
    assert np.asarray(img).dtype == np.uint8


def _check_error(exc: Exception) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text


# The DICOM reader itself (its own DicomError, a LungCTError), and the image reader as predict, the API and the
# app call it (a name without .dcm: the DICM header decides).
DICOM_READERS = {
    "dicom": lambda data: load_dicom_image(data, "ct.dcm"),
    "image": lambda data: open_image(io.BytesIO(data), "upload"),
}


def test_the_unmutated_bases_decode():
    for name, data in image_bases().items():
        _check_image(open_image(io.BytesIO(data), name), "L")
    _check_image(open_image(io.BytesIO(dicom_base()), "ct.dcm"), "L")
    _check_image(load_dicom_image(dicom_base(), "ct.dcm"), "L")


def test_mutated_images_decode_or_raise_image_read_error():
    seen: list[int] = []

    @FUZZ
    @given(
        case=mutated_images(),
        color=st.sampled_from(["grey", "rgb"]),
        hu_offset=st.sampled_from([None, None, 0, 1024, 32768]),  # 16-bit and float files windowed as HU + offset
    )
    def check(case: tuple[str, bytes], color: str, hu_offset: int | None) -> None:
        seen.append(1)
        name, data = case
        try:
            img = open_image(io.BytesIO(data), name, color, hu_offset=hu_offset)
        except ImageReadError as exc:
            _check_error(exc)
            assert exc.path == name
        else:
            _check_image(img, "L" if color == "grey" else "RGB")

    check()
    assert len(seen) >= EXAMPLES


def test_mutated_dicom_decodes_or_raises_a_lungct_error():
    seen: list[int] = []

    @FUZZ
    @given(data=mutated_dicoms(), via=st.sampled_from(sorted(DICOM_READERS)))
    def check(data: bytes, via: str) -> None:
        seen.append(1)
        try:
            img = DICOM_READERS[via](data)
        except (ImageReadError, LungCTError) as exc:
            _check_error(exc)
        else:
            _check_image(img, "L")

    check()
    assert len(seen) >= EXAMPLES
