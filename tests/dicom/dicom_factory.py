"""Build small DICOM CT files with pydicom, with known HU values and identifying patient tags."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

# Values that must never appear in any output.
PATIENT = {
    "PatientName": "Doe^Janet^Q",
    "PatientID": "PID-937451",
    "PatientBirthDate": "19580314",
    "PatientSex": "F",
    "InstitutionName": "St Elsewhere Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "AccessionNumber": "ACC-55123",
}
PRIVATE_VALUES = [v for k, v in PATIENT.items() if k != "PatientSex"] + ["Doe", "Janet", "937451"]


def ct_dataset(
    hu: np.ndarray,
    *,
    slope: float = 1.0,
    intercept: float = -1024.0,
    position: tuple[float, float, float] | None = (0.0, 0.0, 0.0),
    orientation: tuple[float, ...] | None = (1, 0, 0, 0, 1, 0),
    instance: int | None = 1,
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    modality: str = "CT",
    window: tuple[float, float] | None = None,
    pixels: bool = True,
) -> Dataset:
    """A single-frame CT slice whose stored values give exactly `hu` through slope and intercept."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = list(position)
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowWidth, ds.WindowCenter = window
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if pixels:
        stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def hu_from_grey(img: Image.Image) -> np.ndarray:
    """HU whose lung window (W1500/L-600) gives back the grey image (up to rounding)."""
    grey = np.asarray(img.convert("L"), dtype=np.float64)
    return -1350.0 + grey / 255.0 * 1500.0


def write_study(folder: Path, images: list[Image.Image], order: list[int] | None = None, **kw) -> list[Path]:
    """One series of slices at z = 0, 2.5, 5, ... written under shuffled file names (order[i] names slice i)."""
    order = order or list(range(len(images)))
    series_uid = generate_uid()
    paths = []
    for i, img in enumerate(images):
        ds = ct_dataset(hu_from_grey(img), position=(0.0, 0.0, 2.5 * i), instance=i + 1, series_uid=series_uid, **kw)
        paths.append(write(ds, folder / f"IM{order[i]:04d}.dcm"))
    return paths


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def with_raw_value(ds: Dataset, keyword: str, vr: str, value: bytes) -> Dataset:
    """Store `value` as the element's bytes, as a broken writer would (pydicom refuses to encode DS "abc")."""
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return ds


def nested_sequence(depth: int, tag: tuple[int, int] = (0xFFFA, 0xFFFA)) -> bytes:
    """Explicit VR little-endian bytes of a sequence nested `depth` levels deep (undefined lengths), to append
    after the pixel data: (FFFA,FFFA) is the Digital Signatures Sequence, the last tag a file may carry."""
    undefined = 0xFFFFFFFF
    sequence = struct.pack("<HH2sHI", tag[0], tag[1], b"SQ", 0, undefined)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, undefined)
    item_end, sequence_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0), struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (sequence + item) * depth + (item_end + sequence_end) * depth


def malformed_dicom(kind: str, hu: np.ndarray | None = None) -> bytes:
    """A CT slice that pydicom opens but cannot use: "slope" (RescaleSlope "abc"), "frames" (NumberOfFrames
    "abc") or "nested" (a sequence 5000 levels deep after the pixel data)."""
    hu = np.zeros((16, 16)) if hu is None else hu
    if kind == "slope":
        return to_bytes(with_raw_value(ct_dataset(hu), "RescaleSlope", "DS", b"abc "))
    if kind == "frames":
        return to_bytes(with_raw_value(ct_dataset(hu), "NumberOfFrames", "IS", b"abc "))
    if kind == "nested":
        return to_bytes(ct_dataset(hu)) + nested_sequence(5000)
    raise ValueError(f"unknown kind {kind!r}")


# kind -> a phrase the error must contain
MALFORMED = {"slope": "RescaleSlope", "frames": "NumberOfFrames", "nested": "nested too deeply"}
