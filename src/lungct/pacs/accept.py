"""What lungct takes in: a single-frame greyscale CT Image Storage instance whose pixels decode to HU.

The same checks as `lungct predict-series` (lungct.dicom.read), made when an instance arrives, so a
malformed one is refused with a failure status at once instead of failing its whole series later.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import CTImageStorage

from lungct.dicom.errors import DicomError
from lungct.dicom.read import read_dataset, to_hu


@dataclass(frozen=True)
class Accepted:
    study_uid: str
    series_uid: str
    sop_uid: str


def accept_instance(data: bytes, name: str = "instance", sop_class: str | None = None) -> Accepted:
    """The instance's UIDs when lungct can use it; a DicomError (no patient data in it) when it cannot."""
    ds = read_dataset(data, name)  # parses, checks CT/pixels/frames/decoder, drops identifying tags
    actual_class = str(ds.get("SOPClassUID", ""))
    if actual_class != CTImageStorage or (sop_class is not None and actual_class != sop_class):
        raise DicomError(name, "data set is not a CT Image Storage instance")
    uids = [str(ds.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    if not all(uids):
        raise DicomError(name, "missing Study, Series or SOP Instance UID")
    to_hu(ds, name)  # the pixels decode and the modality LUT applies
    return Accepted(*uids)
