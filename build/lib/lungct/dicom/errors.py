"""The one error DICOM reading raises: it names the file and the problem, never a patient tag."""

from __future__ import annotations

from pathlib import Path

from lungct.errors import LungCTError


class DicomError(LungCTError):
    """A DICOM file or series that cannot be used; `reason` is short and contains no patient data."""

    def __init__(self, name: str | Path, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = str(name)
        self.reason = reason
