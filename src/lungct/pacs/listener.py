"""`lungct dicom-listen`: a Storage SCP (pynetdicom) that takes CT instances into the spool, and one worker
thread that analyses each series once it is quiet and delivers the results from the queue.

Statuses (PS3.4 Annex B, PS3.7 Annex C): 0x0000 stored; 0x0122 SOP class not supported (every storage SOP
class is negotiated so that a mixed study goes through, and each non-CT instance is refused on its own);
0xA700 out of resources (the spool is full: the sender may try again later); 0xA900 the data set does not
match its SOP class; 0xC000 the instance cannot be used (malformed, undecodable pixels...), with the reason in
ErrorComment. A refused instance never ends the association: the next one is taken as usual. C-ECHO answers.
"""

from __future__ import annotations

import gc
import logging
import ssl
import threading

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from lungct.dicom.errors import DicomError
from lungct.errors import LungCTError
from lungct.pacs.accept import accept_instance
from lungct.pacs.ids import short_id
from lungct.pacs.pipeline import Pipeline
from lungct.pacs.spool import Spool, SpoolFull

log = logging.getLogger("lungct.pacs")

SUCCESS, NOT_SUPPORTED, OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0x0122, 0xA700, 0xA900, 0xC000
POLL_SECONDS = 0.2


UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
# Lossless compressions a PACS may keep CT in. Lossy ones are not negotiated (the sender transcodes): the
# Hounsfield units the model's windows are set on would no longer be the scanner's.
LOSSLESS = [JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEG2000Lossless, RLELossless]


def ct_transfer_syntaxes() -> list[str]:
    """What CT instances may arrive in: uncompressed, plus each lossless compression that an installed pydicom
    decoder reads (the [dicom] extra brings JPEG Lossless; RLE is pydicom's own)."""
    return UNCOMPRESSED + [uid for uid in LOSSLESS if get_decoder(uid).is_available]


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    return ds


class Listener:
    def __init__(
        self,
        pipeline: Pipeline,
        spool: Spool,
        ae_title: str,
        port: int,
        host: str = "0.0.0.0",
        series_timeout: float = 10.0,
        allowed_senders: tuple[str, ...] = (),
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.pipeline, self.spool = pipeline, spool
        self.allowed_senders = allowed_senders  # calling AE titles let in; empty: any sender
        self.ssl_context = ssl_context  # DICOM TLS (lungct.pacs.tls); None: plain TCP
        self.ae_title, self.host, self.port = ae_title, host, port
        self.series_timeout = series_timeout
        self.stopping = threading.Event()
        self.trigger = threading.Event()  # analyse every spooled series now (SIGUSR1)
        self.fatal: str | None = None  # why the worker stopped the listener
        self.server = None
        self._worker: threading.Thread | None = None

    # --- the SCP ---
    def handle_store(self, event) -> Dataset:
        """Take one C-STORE: check it, spool it, or say why not; never raise (that would abort the sender)."""
        try:
            sop_class = str(event.request.AffectedSOPClassUID)
            if sop_class != CTImageStorage:
                return _status(NOT_SUPPORTED, "only CT Image Storage is accepted")
            data = event.encoded_dataset(include_meta=True)
            accepted = accept_instance(data, "instance", sop_class)
        except DicomError as exc:
            code = MISMATCH if "not a CT Image Storage" in exc.reason else CANNOT_UNDERSTAND
            log.warning("refused an instance: %s", exc.reason)
            return _status(code, exc.reason)
        except Exception as exc:  # pynetdicom or pydicom failing on the bytes themselves
            log.warning("refused an instance that cannot be read (%s)", type(exc).__name__)
            return _status(CANNOT_UNDERSTAND, "instance cannot be read")
        try:
            self.spool.store(accepted.study_uid, accepted.series_uid, accepted.sop_uid, data)
        except SpoolFull as exc:
            log.warning("refused an instance: %s", exc)
            return _status(OUT_OF_RESOURCES, "spool full, try again later")
        except OSError as exc:
            log.error("cannot spool an instance (%s)", exc.strerror or type(exc).__name__)
            return _status(OUT_OF_RESOURCES, "cannot write to the spool")
        log.debug("stored an instance of series %s", short_id(accepted.series_uid))
        return _status(SUCCESS)

    def handle_rejected(self, event) -> None:
        """Say who was turned away (a PACS sending under an AE title missing from --allow-ae shows up here)."""
        requestor = event.assoc.requestor
        log.warning(
            "refused an association from %s, calling AE title %r: addressed to another AE title, a sender not "
            "in --allow-ae, or too many associations",
            requestor.address,
            requestor.ae_title,
        )

    def start(self) -> None:
        """Listen (an OSError when the port is taken) and start the worker."""
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True  # an association addressed to another AE title is rejected
        # pynetdicom rejects any other calling AE title itself ("calling AE title not recognised", PS3.8 9.3.4)
        ae.require_calling_aet = list(self.allowed_senders)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.remove_supported_context(CTImageStorage)
        ae.add_supported_context(CTImageStorage, ct_transfer_syntaxes())
        ae.add_supported_context(Verification)
        ae.maximum_associations = 8
        handlers = [
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_REJECTED, self.handle_rejected),
        ]
        self.server = ae.start_server(
            (self.host, self.port), block=False, ssl_context=self.ssl_context, evt_handlers=handlers
        )
        self._worker = threading.Thread(target=self._work, name="lungct-pacs-worker", daemon=True)
        self._worker.start()
        log.info(
            "listening as %s on %s:%d%s; series are analysed after %g s without a new instance",
            self.ae_title,
            self.host,
            self.port,
            "" if self.ssl_context is None else " (DICOM TLS)",
            self.series_timeout,
        )

    def stop(self) -> None:
        """Stop taking associations, let the worker finish its current step, and return."""
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
        if self._worker is not None:
            self._worker.join()

    # --- the worker ---
    def _work(self) -> None:
        frozen = False
        while not self.stopping.is_set():
            try:
                self.step()
            except LungCTError as exc:  # the run itself is broken (its weights cannot be loaded): stop here
                self.fatal = str(exc)
                self.stopping.set()
                return
            except Exception as exc:  # keep listening; the queue and the spool are on disk
                log.error("worker step failed (%s); trying again", type(exc).__name__)
            if not frozen and self.pipeline.analyzer.loaded:
                gc.freeze()  # the model and its libraries live until exit: the last collection need not walk them
                frozen = True
            self.stopping.wait(POLL_SECONDS)

    def step(self) -> None:
        """Analyse what is ready (series left in work/ by a crash first), then deliver what is due. The model
        loads with the first series to analyse, so a restart with nothing to analyse delivers at once."""
        for work_dir in self.spool.claimed():
            if work_dir not in self.pipeline.stuck and not self.stopping.is_set():
                self.pipeline.process(work_dir)
        now = self.trigger.is_set()
        self.trigger.clear()
        ready = self.spool.pending() if now else self.spool.quiet(self.series_timeout)
        for series_dir in ready:
            if self.stopping.is_set():
                return
            self.pipeline.process(self.spool.claim(series_dir))
        if not self.stopping.is_set():
            self.pipeline.drain()
