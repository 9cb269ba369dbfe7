"""Reading one DICOM slice into Hounsfield units, with a clear error for each way it can fail.

pydicom does the parsing, decoding and the modality LUT (RescaleSlope/RescaleIntercept); this module
only checks what a CT classifier needs and turns pydicom's many exceptions into one DicomError. Files are
hostile input (uploads to the API): a malformed value (RescaleSlope "abc", NumberOfFrames "abc") or a
structure pydicom cannot parse (sequences nested thousands deep) is a DicomError too, never another exception.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.tag import Tag

from lungct.dicom.detect import DICOM_SUFFIXES, has_dicom_preamble, is_dicom_path  # noqa: F401 (re-exported)
from lungct.dicom.errors import DicomError
from lungct.errors import one_line


def slice_id(ds: Dataset, name: str | Path) -> str:
    """How outputs name a slice: a hash of its SOPInstanceUID, else its file name (never patient tags)."""
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if uid:
        return "sop-" + hashlib.sha256(uid.encode()).hexdigest()[:16]
    return Path(str(name)).name


def read_dataset(source: str | Path | bytes | BinaryIO, name: str | Path, force: bool = False) -> Dataset:
    """Parse a DICOM file and check it is a single-frame greyscale CT image whose pixels can be decoded.

    force=True accepts modalities other than CT (e.g. a CT-like image stored as OT or MR).
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        ds = pydicom.dcmread(source)
    except InvalidDicomError:
        raise DicomError(name, "not a DICOM file (no DICM header)") from None
    except FileNotFoundError:
        raise DicomError(name, "file not found") from None
    except RecursionError:
        raise DicomError(name, "corrupt DICOM file (sequences nested too deeply to parse)") from None
    except Exception as exc:  # pydicom raises many types (OSError, ValueError, struct.error, ...) for bad files
        raise DicomError(name, f"corrupt or truncated DICOM file ({type(exc).__name__})") from None
    try:
        check_dataset(ds, name, force)
        drop_identifiers(ds)
    except DicomError:
        raise
    except RecursionError:
        raise DicomError(name, "corrupt DICOM file (sequences nested too deeply to parse)") from None
    except Exception as exc:  # a value pydicom cannot convert when it is first accessed
        raise DicomError(name, f"corrupt DICOM file: a data element cannot be read ({type(exc).__name__})") from None
    return ds


# Tags outside the patient group (0010) that name people or places; with private tags they are dropped
# on reading, so no later step (outputs, logs, errors) can reveal them even by accident.
_IDENTIFYING = frozenset(
    Tag(k)
    for k in (
        "AccessionNumber",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "PhysiciansOfRecord",
        "NameOfPhysiciansReadingStudy",
        "RequestingPhysician",
        "StationName",
        "StudyID",
        "DeviceSerialNumber",
    )
)


def drop_identifiers(ds: Dataset) -> None:
    """Delete patient, staff and institution tags and private tags (by tag, without decoding values)."""
    for tag in list(ds.keys()):
        if tag.group == 0x0010 or tag.is_private or tag in _IDENTIFYING:
            del ds[tag]


def check_dataset(ds: Dataset, name: str | Path, force: bool = False) -> None:
    if "PixelData" not in ds:
        raise DicomError(name, f"DICOM file has no pixel data{_why_no_pixels(ds)}")
    modality = str(ds.get("Modality", "") or "unknown")
    if modality != "CT" and not force:
        raise DicomError(name, f"modality is {modality}, not CT (pass --force to use it anyway)")
    frames = int_tag(ds, "NumberOfFrames", 1, name)
    if frames > 1:
        raise DicomError(name, f"multi-frame DICOM ({frames} frames) is not supported; export single-frame slices")
    if int_tag(ds, "SamplesPerPixel", 1, name) != 1:
        raise DicomError(name, "colour DICOM image (SamplesPerPixel > 1); a CT slice is greyscale")
    # A PALETTE COLOR slice's stored values are palette indices, not Hounsfield units: read as HU they gave a
    # plausible but meaningless prediction. PS3.3 C.8.2.1 allows a CT image MONOCHROME1 or MONOCHROME2 only.
    photometric = str(_tag_value(ds, "PhotometricInterpretation", name) or "MONOCHROME2").strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(
            name, f"photometric interpretation {photometric[:16]}; a CT slice is greyscale (MONOCHROME1 or 2)"
        )
    check_decoder(ds, name)


def _why_no_pixels(ds: Dataset) -> str:
    """A hint for a file without PixelData: pydicom reads a file cut short without complaint and returns the
    elements before the cut, so an image object (or nothing at all) without pixels is most likely truncated."""
    if "DirectoryRecordSequence" in ds:
        return " (a DICOMDIR?)"
    meta = getattr(ds, "file_meta", None)
    sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    if sop_class is None and len(ds) == 0:
        return " (nothing readable after its header: truncated or damaged?)"
    if sop_class is not None and "Image Storage" in getattr(sop_class, "name", ""):
        return f" (a {sop_class.name} file: truncated?)"
    return ""


def _tag_value(ds: Dataset, keyword: str, name: str | Path):
    """The element's value (the first of several), or None when absent or empty."""
    try:
        value = ds.get(keyword)
    except Exception as exc:  # pydicom converts raw values on first access, and that can fail
        raise DicomError(name, f"invalid {keyword} ({type(exc).__name__})") from None
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    return None if value is None or str(value).strip() == "" else value


def int_tag(ds: Dataset, keyword: str, default: int, name: str | Path) -> int:
    """An integer tag such as NumberOfFrames; a DicomError naming the tag when its value is not an integer."""
    value = _tag_value(ds, keyword, name)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise DicomError(name, f"invalid {keyword}: not an integer") from None


def float_tag(ds: Dataset, keyword: str, default: float, name: str | Path) -> float:
    """A finite decimal tag such as RescaleSlope; a DicomError naming the tag otherwise."""
    value = _tag_value(ds, keyword, name)
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DicomError(name, f"invalid {keyword}: not a number") from None
    if not math.isfinite(number):
        raise DicomError(name, f"invalid {keyword}: not a finite number")
    return number


def check_decoder(ds: Dataset, name: str | Path) -> None:
    """Name the package to install when the pixel data is compressed and no installed plugin decodes it."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None or not tsyntax.is_compressed:
        return
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DicomError(name, f"compressed transfer syntax {tsyntax.name} is not supported by pydicom") from None
    if not decoder.is_available:
        options = "; ".join(_pip_names(decoder.missing_dependencies))
        raise DicomError(name, f"compressed transfer syntax {tsyntax.name} needs a decoder: install {options}")


def _pip_names(missing: list[str]) -> list[str]:
    """pydicom's plugin notes ("gdcm - requires gdcm>=3.0.10") to pip package names ("python-gdcm>=3.0.10")."""
    out = []
    for note in missing:
        needs = note.split(" - requires ", 1)[-1]
        out.append(needs.replace("gdcm>=", "python-gdcm>=").replace("numpy and ", ""))
    return out


def to_hu(ds: Dataset, name: str | Path = "") -> np.ndarray:
    """Pixel values in Hounsfield units (float32) via the modality LUT (RescaleSlope/RescaleIntercept)."""
    try:
        stored = ds.pixel_array
    except ValueError as exc:  # pydicom's own checks say which element is wrong or how many bytes are missing
        raise DicomError(name, f"pixel data cannot be decoded: {one_line(exc, 200)}") from None
    except Exception as exc:  # decoders raise many exception types for damaged data
        raise DicomError(name, f"pixel data cannot be decoded ({type(exc).__name__})") from None
    if stored.ndim != 2:
        raise DicomError(name, f"pixel data has shape {stored.shape}, expected one 2-D slice")
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        float_tag(ds, keyword, default, name)  # checked here: pydicom would multiply by a string
    try:
        hu = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    except Exception as exc:  # a damaged Modality LUT Sequence, or values numpy cannot use
        raise DicomError(name, f"the modality LUT cannot be applied ({type(exc).__name__})") from None
    if not np.isfinite(hu).all():
        raise DicomError(name, "the modality LUT gives values that are not finite numbers")
    return hu


def read_hu(source: str | Path | bytes | BinaryIO, name: str | Path, force: bool = False) -> np.ndarray:
    return to_hu(read_dataset(source, name, force), name)
