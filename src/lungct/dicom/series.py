"""One CT series from a folder or a zip: its slices, checked for consistency, in anatomical order.

Order comes from ImagePositionPatient projected on the slice normal (the cross product of the
ImageOrientationPatient row and column vectors), since file names and InstanceNumber are often
unreliable; InstanceNumber is the fallback when positions are missing.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from lungct.dicom.errors import DicomError
from lungct.dicom.read import DICOM_SUFFIXES, has_dicom_preamble, read_dataset, slice_id
from lungct.files import natural_key

MAX_ZIP_BYTES = 4 * 1024**3  # uncompressed; a zip claiming more is refused as a possible zip bomb
MAX_SLICES = 5000


@dataclass
class SeriesSlice:
    name: str  # file name (or zip member), for messages and outputs
    id: str  # SOPInstanceUID hash or file name: what outputs call this slice
    dataset: Dataset
    position: float | None  # along the slice normal, mm
    instance: int | None


@dataclass
class Series:
    source: str
    slices: list[SeriesSlice]
    order: str  # "position", "instance" or "name": what the slice order is based on
    skipped: list[str]  # file names that are not DICOM (READMEs, DICOMDIR...)


def _candidates(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file that may be DICOM, from a folder (recursively) or a zip."""
    if path.is_dir():
        for f in sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: natural_key(str(p))):
            if not f.name.startswith("."):
                yield str(f.relative_to(path)), f.read_bytes()
        return
    if not zipfile.is_zipfile(path):
        raise DicomError(path, "not a folder or a zip file")
    with zipfile.ZipFile(path) as zf:
        members = [m for m in zf.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")]
        if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise DicomError(path, "zip too large when unpacked")
        for m in sorted(members, key=lambda m: natural_key(m.filename)):
            try:
                yield m.filename, zf.read(m)
            except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
                raise DicomError(path, f"cannot unpack {m.filename} ({type(exc).__name__})") from None


def _looks_dicom(name: str, data: bytes) -> bool:
    return Path(name).suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(data[:132])


def load_series(path: str | Path, force: bool = False) -> Series:
    """Read every DICOM slice under a folder or in a zip and return them checked and in slice order."""
    path = Path(path)
    if not path.exists():
        raise DicomError(path, "not found")
    slices: list[SeriesSlice] = []
    skipped: list[str] = []
    for name, data in _candidates(path):
        if Path(name).name.upper() == "DICOMDIR" or not _looks_dicom(name, data):
            skipped.append(Path(name).name)
            continue
        ds = read_dataset(data, name, force)
        slices.append(SeriesSlice(name, slice_id(ds, name), ds, None, _int(ds.get("InstanceNumber"))))
        if len(slices) > MAX_SLICES:
            raise DicomError(path, f"more than {MAX_SLICES} slices; is this one series?")
    if not slices:
        raise DicomError(path, "no DICOM slices found")
    _check_consistent(path, slices)
    order = _sort(slices)
    return Series(str(path), slices, order, skipped)


def _int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _check_consistent(path: Path, slices: list[SeriesSlice]) -> None:
    """One series, one slice size and one orientation: anything else cannot be ordered into a volume."""
    series = {str(s.dataset.get("SeriesInstanceUID", "")) for s in slices}
    if len(series) > 1:
        raise DicomError(path, f"inconsistent series: the files belong to {len(series)} different series")
    sizes = {(int(s.dataset.Rows), int(s.dataset.Columns)) for s in slices}
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c}" for r, c in sorted(sizes))
        raise DicomError(path, f"inconsistent series: slices have different sizes ({shown})")
    orients = [_vector(s.dataset.get("ImageOrientationPatient"), 6) for s in slices]
    if all(o is not None for o in orients):
        first = orients[0]
        for s, o in zip(slices, orients, strict=True):
            if not np.allclose(o, first, atol=1e-3):
                raise DicomError(path, f"inconsistent series: {s.name} has a different orientation")
    uids = [s.id for s in slices if s.id.startswith("sop-")]
    if len(uids) != len(set(uids)):
        raise DicomError(path, "inconsistent series: the same SOPInstanceUID occurs twice")


def _vector(value, n: int) -> np.ndarray | None:
    """A DICOM multi-value of `n` finite numbers, or None when it is missing or malformed ("x\\y\\z", two values):
    one damaged tag must not make a series fail for ever; the order then falls back to InstanceNumber."""
    try:
        out = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        return None
    return out if out.size == n and np.isfinite(out).all() else None


def _sort(slices: list[SeriesSlice]) -> str:
    """Sort in place; return what the order is based on."""
    iop = _vector(slices[0].dataset.get("ImageOrientationPatient"), 6)
    positions = [_vector(s.dataset.get("ImagePositionPatient"), 3) for s in slices]
    if iop is not None and all(p is not None for p in positions):
        normal = np.cross(iop[:3], iop[3:])
        for s, p in zip(slices, positions, strict=True):
            s.position = float(np.dot(p, normal))
        slices.sort(key=lambda s: (s.position, s.instance or 0))
        return "position"
    if all(s.instance is not None for s in slices):
        slices.sort(key=lambda s: s.instance)
        return "instance"
    return "name"  # already in natural file-name order
