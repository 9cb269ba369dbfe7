"""Build small DICOM CT files with pydicom, with known HU values and identifying patient tags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
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
