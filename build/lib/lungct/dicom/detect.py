"""Is this file DICOM? Decided from its name or its first 132 bytes, without pydicom, so that image reading
everywhere can ask without the `dicom` extra installed; only reading a DICOM file needs pydicom."""

from __future__ import annotations

from pathlib import Path

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
    if not path.is_file():  # never open a FIFO or device: the read would block
        return False
    try:
        with path.open("rb") as fh:
            return has_dicom_preamble(fh.read(_PREAMBLE + 4))
    except OSError:
        return False
