"""lungct in the radiology workflow: a DICOM Storage SCP, a DICOMweb client, results as DICOM (docs/pacs.md).

One concern a module: `nodes` (AE titles and HOST:PORT:AET), `ids` (names for logs and derived UIDs),
`spool` (received instances by study and series), `outbox` (the on-disk queue of results to send), `send`
(C-STORE SCU and STOW-RS), `results` (the SR and the Grad-CAM Secondary Capture), `analysis` (one series to
its results), `listener` (the Storage SCP and its worker) and `dicomweb` (WADO-RS in, STOW-RS out).
Submodules load on first use, so `lungct --help` never pays for pynetdicom or highdicom.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "analysis": ["Analyzer", "SeriesResult", "operating_threshold"],
        "ids": ["derived_uid", "short_id"],
        "listener": ["Listener"],
        "nodes": ["Node", "parse_node"],
        "outbox": ["Outbox", "QueueFull"],
        "spool": ["Spool", "SpoolFull"],
    },
)
