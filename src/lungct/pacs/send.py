"""Delivering queued results: C-STORE to a DICOM node (pynetdicom), or STOW-RS to a DICOMweb server.

A destination is a string kept with each queued item: "cstore:HOST:PORT:AET" or "stow:URL". Each delivery
says per object whether it was taken, should be tried again (the destination is down, busy, or out of
resources), or was refused for good (a failure status that sending again would repeat).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pydicom
import requests
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from lungct.pacs import dicomweb
from lungct.pacs.nodes import Node, parse_node

log = logging.getLogger("lungct.pacs")

CSTORE, STOW = "cstore:", "stow:"
NETWORK_TIMEOUT = 30.0  # seconds: connecting, negotiating, and waiting for one C-STORE response


class Outcome(Enum):
    SENT = "sent"
    RETRY = "retry"
    REFUSED = "refused"


@dataclass
class Result:
    outcome: Outcome
    detail: str = ""


def cstore_destination(node: Node) -> str:
    return f"{CSTORE}{node}"


def stow_destination(url: str) -> str:
    return f"{STOW}{dicomweb.check_url(url)}"


def check_destination(destination: str) -> str:
    if destination.startswith(CSTORE):
        parse_node(destination[len(CSTORE) :])
    elif destination.startswith(STOW):
        dicomweb.check_url(destination[len(STOW) :])
    else:
        raise ValueError(f"unknown destination {destination!r}")
    return destination


def deliver(
    destination: str, files: list[Path], calling_ae_title: str = "LUNGCT", tls: ssl.SSLContext | None = None
) -> list[Result]:
    """Send `files` to one destination over one association or request; one Result per file, in order. `tls`:
    C-STORE over DICOM TLS with that context (lungct.pacs.tls.client_context)."""
    datasets = [pydicom.dcmread(f) for f in files]
    if destination.startswith(CSTORE):
        return cstore(parse_node(destination[len(CSTORE) :]), datasets, calling_ae_title, tls)
    if destination.startswith(STOW):
        return stow(destination[len(STOW) :], datasets)
    raise ValueError(f"unknown destination {destination!r}")


def _cstore_outcome(status: Dataset) -> Result:
    code = getattr(status, "Status", None)
    if code is None:  # no response: the association was aborted or timed out
        return Result(Outcome.RETRY, "no C-STORE response")
    if code == 0x0000 or code & 0xF000 == 0xB000:  # success, or a warning (coerced, elements discarded)
        return Result(Outcome.SENT, f"status 0x{code:04X}")
    if code & 0xFF00 == 0xA700:  # out of resources: the PACS may have room later
        return Result(Outcome.RETRY, f"status 0x{code:04X} (out of resources)")
    return Result(Outcome.REFUSED, f"status 0x{code:04X}")


def cstore(
    node: Node, datasets: list[Dataset], calling_ae_title: str = "LUNGCT", tls: ssl.SSLContext | None = None
) -> list[Result]:
    """C-STORE SCU: every dataset over one association; a refused or lost association means retry all."""
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT
    ae.connection_timeout = NETWORK_TIMEOUT
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = None if tls is None else (tls, node.host)  # the host name its certificate must carry
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        return [Result(Outcome.RETRY, f"association {why}")] * len(datasets)
    results = []
    try:
        for ds in datasets:
            if not assoc.is_established:
                results.append(Result(Outcome.RETRY, "association lost"))
                continue
            try:
                results.append(_cstore_outcome(assoc.send_c_store(ds)))
            except (ValueError, RuntimeError) as exc:  # no accepted presentation context for this SOP class
                results.append(Result(Outcome.REFUSED, str(exc)[:120]))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


# HTTP statuses after which sending the same objects again can succeed
_RETRY_HTTP = {401, 403, 408, 425, 429}  # credentials can be fixed, the server can get less busy


def stow(url: str, datasets: list[Dataset]) -> list[Result]:
    """STOW-RS: every dataset in one request; a failed request means retry all unless it is a client error."""
    try:
        response = dicomweb.stow(dicomweb.make_client(url), datasets)
    except requests.RequestException as exc:
        status = dicomweb.http_status(exc)
        outcome = Outcome.RETRY if status is None or status >= 500 or status in _RETRY_HTTP else Outcome.REFUSED
        return [Result(outcome, dicomweb.describe_http_error(exc))] * len(datasets)
    failed = {}
    for item in response.get("FailedSOPSequence", []) or []:
        failed[str(item.get("ReferencedSOPInstanceUID", ""))] = int(item.get("FailureReason", 0xC000))
    out = []
    for ds in datasets:
        reason = failed.get(str(ds.SOPInstanceUID))
        if reason is None:
            out.append(Result(Outcome.SENT, "stored"))
        elif reason & 0xFF00 == 0xA700:
            out.append(Result(Outcome.RETRY, f"failure reason 0x{reason:04X}"))
        else:
            out.append(Result(Outcome.REFUSED, f"failure reason 0x{reason:04X}"))
    return out
