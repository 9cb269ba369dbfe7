"""Reading one DICOM slice into Hounsfield units, with a clear error for each way it can fail.

pydicom does the parsing, decoding and the modality LUT (RescaleSlope/RescaleIntercept); this module
only checks what a CT classifier needs and turns pydicom's many exceptions into one DicomError.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.tag import Tag

from lungct.dicom.errors import DicomError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
_PREAMBLE = 128


def has_dicom_preamble(head: bytes) -> bool:
    """True when the first 132 bytes are a DICOM Part 10 preamble followed by "DICM"."""
    return len(head) >= _PREAMBLE + 4 and head[_PREAMBLE : _PREAMBLE + 4] == b"DICM"


def is_dicom_path(path: str | Path) -> bool:
    """A .dcm/.dicom file, or any file whose header says DICM (DICOM files often have no extension)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            return has_dicom_preamble(fh.read(_PREAMBLE + 4))
    except OSError:
        return False


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
    except (OSError, EOFError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DicomError(name, f"corrupt or truncated DICOM file ({type(exc).__name__})") from None
    check_dataset(ds, name, force)
    drop_identifiers(ds)
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
        kind = " (a DICOMDIR?)" if "DirectoryRecordSequence" in ds else ""
        raise DicomError(name, f"DICOM file has no pixel data{kind}")
    modality = str(ds.get("Modality", "") or "unknown")
    if modality != "CT" and not force:
        raise DicomError(name, f"modality is {modality}, not CT (pass --force to use it anyway)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(name, f"multi-frame DICOM ({frames} frames) is not supported; export single-frame slices")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(name, "colour DICOM image (SamplesPerPixel > 1); a CT slice is greyscale")
    check_decoder(ds, name)


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
    except Exception as exc:  # decoders raise many exception types for damaged data
        raise DicomError(name, f"pixel data cannot be decoded ({type(exc).__name__})") from None
    if stored.ndim != 2:
        raise DicomError(name, f"pixel data has shape {stored.shape}, expected one 2-D slice")
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)


def read_hu(source: str | Path | bytes | BinaryIO, name: str | Path, force: bool = False) -> np.ndarray:
    return to_hu(read_dataset(source, name, force), name)
