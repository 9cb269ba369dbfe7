"""`lungct dicomweb`: retrieve one study over WADO-RS into the spool, analyse each CT series in it, and store
the results back over STOW-RS through the on-disk queue (results a failed run leaves there go with the next).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from lungct.dicom.errors import DicomError
from lungct.errors import LungCTError
from lungct.pacs import dicomweb
from lungct.pacs.accept import accept_instance
from lungct.pacs.ids import short_id
from lungct.pacs.pipeline import Pipeline, encode
from lungct.pacs.spool import SpoolFull

log = logging.getLogger("lungct.pacs")
UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass
class PullSummary:
    instances: int = 0  # CT instances taken
    other: int = 0  # instances of other SOP classes (earlier results, reports...), skipped
    refused: int = 0  # CT instances lungct cannot use
    series: int = 0  # series analysed
    delivered: int = 0
    waiting: int = 0  # results still in the queue


def check_uid(uid: str) -> str:
    if not (0 < len(uid) <= 64 and UID_PATTERN.match(uid)):
        raise LungCTError(f"{uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def _with_meta(ds: Dataset) -> Dataset:
    """A retrieved instance ready to be written as a file (a server may send it without file meta)."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    return ds


def pull_study(url: str, study_uid: str, pipeline: Pipeline, wait_seconds: float = 60.0) -> PullSummary:
    """Retrieve, analyse, store back; waits up to `wait_seconds` for the queue to empty (retries with backoff)."""
    check_uid(study_uid)
    client = dicomweb.make_client(url, attempts=2)
    spool = pipeline.spool
    summary = PullSummary()
    for ds in dicomweb.iter_study(client, study_uid):
        if str(ds.get("SOPClassUID", "")) != CTImageStorage:
            summary.other += 1
            continue
        try:
            data = encode(_with_meta(ds))
            accepted = accept_instance(data, f"instance {summary.instances + summary.refused + 1}")
        except (DicomError, ValueError, AttributeError) as exc:
            summary.refused += 1
            log.warning("skipped a CT instance: %s", exc.reason if isinstance(exc, DicomError) else type(exc).__name__)
            continue
        try:
            spool.store(accepted.study_uid, accepted.series_uid, accepted.sop_uid, data)
        except SpoolFull:
            raise LungCTError(
                f"the study is larger than the spool limit ({spool.max_bytes // 2**20} MiB); raise --spool-limit-mb"
            ) from None
        summary.instances += 1
    log.info(
        "study %s: %d CT instances retrieved, %d other instances skipped, %d refused",
        short_id(study_uid),
        summary.instances,
        summary.other,
        summary.refused,
    )
    if summary.instances == 0:
        raise LungCTError(f"study {study_uid} has no CT image instances lungct can use")
    for series_dir in spool.pending():
        spool.claim(series_dir)
    for work_dir in spool.claimed():  # this study's series, and any an interrupted run left
        summary.series += int(pipeline.process(work_dir))
    deadline = time.monotonic() + wait_seconds
    while True:
        summary.delivered += pipeline.drain()
        wait = pipeline.outbox.next_due_in()
        if wait is None or time.monotonic() + wait > deadline:
            break
        time.sleep(wait)
    summary.waiting = len(pipeline.outbox.pending())
    return summary
