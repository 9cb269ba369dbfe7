"""What logs call a study, series or instance, and the UIDs of the objects lungct makes.

Logs name DICOM entities by a short hash of their UID, never by a patient tag, so a log can be shared. Result
UIDs are derived from the input (the source series' instances and the model version), not drawn at random:
analysing the same instances again, after a crash or a restart, makes objects with the same UIDs, which a
PACS stores once instead of twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pydicom.uid import UID, generate_uid


def short_id(uid: str) -> str:
    """Twelve hex digits of the SHA-256 of a UID: enough to follow one study through a log, nothing more."""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:12]


def derived_uid(*parts: str | Iterable[str]) -> UID:
    """A UID that depends only on `parts` (strings or iterables of strings), in pydicom's UID root."""
    flat: list[str] = []
    for part in parts:
        flat.extend([part] if isinstance(part, str) else list(part))
    return generate_uid(entropy_srcs=flat)
