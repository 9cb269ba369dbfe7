"""From a claimed series to delivered results, shared by `lungct dicom-listen` and `lungct dicomweb`:
analyse it, write the result objects under --out and queue them for each destination, then deliver what is
due from the queue. Logs name studies and series by short hashes only (ids.short_id).
"""

from __future__ import annotations

import io
import logging
import ssl
from collections import defaultdict
from pathlib import Path

from pydicom.dataset import Dataset

from lungct.errors import LungCTError
from lungct.files import atomic_write
from lungct.pacs.analysis import Analyzer
from lungct.pacs.ids import short_id
from lungct.pacs.outbox import Outbox, QueueFull
from lungct.pacs.send import Outcome, deliver
from lungct.pacs.spool import Spool

log = logging.getLogger("lungct.pacs")
SEND_CHUNK = 32  # objects per association or STOW request


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Pipeline:
    def __init__(
        self,
        analyzer: Analyzer,
        spool: Spool,
        outbox: Outbox,
        destinations: list[str],
        out_dir: Path | None = None,
        calling_ae_title: str = "LUNGCT",
        tls: ssl.SSLContext | None = None,
    ):
        self.analyzer, self.spool, self.outbox = analyzer, spool, outbox
        self.destinations, self.out_dir, self.calling_ae_title = destinations, out_dir, calling_ae_title
        self.tls = tls  # C-STORE destinations over DICOM TLS (--forward-tls)
        self.stuck: set[Path] = set()  # series that failed for a reason other than their content: next start
        self._full_warned = False

    def _room_for(self, work_dir: Path) -> bool:
        """A rough bound on the results' size (an RGB slice and a report per destination) fits in the queue."""
        if not self.destinations:
            return True
        largest = max((f.stat().st_size for f in work_dir.glob("*.dcm")), default=0)
        needed = (2 * largest + 2**20) * len(self.destinations)
        if self.outbox.has_room(needed):
            self._full_warned = False
            return True
        if not self._full_warned:
            log.warning("the outgoing queue is full; series wait in the spool until results are delivered")
            self._full_warned = True
        return False

    def process(self, work_dir: Path) -> bool:
        """Analyse one claimed series folder and queue its results; False when it must wait (queue full)."""
        if not self._room_for(work_dir):
            return False
        self.analyzer.load()  # a run that cannot be loaded is no fault of the series: its LungCTError ends the command
        try:
            result = self.analyzer.analyse(work_dir)
        except LungCTError as exc:  # the series cannot be used: our messages name no patient
            log.warning("series in %s cannot be analysed: %s", work_dir.name, exc)
            self.spool.release(work_dir)
            return True
        except Exception as exc:  # a bug or the machine: keep the series for the next start, say what broke
            log.error(
                "analysing series %s failed (%s); it is kept and tried again at the next start",
                work_dir.name,
                type(exc).__name__,
            )
            self.stuck.add(work_dir)
            return True
        f = result.finding
        log.info(
            "study %s series %s: %d slices, %s score %.4f, threshold %.4g: %s",
            result.study,
            result.series,
            result.n_slices,
            f.positive_class,
            f.score,
            f.threshold,
            f.label,
        )
        encoded = [(encode(ds), str(ds.SOPInstanceUID), str(ds.Modality)) for ds in result.objects]
        try:
            if self.out_dir is not None:
                folder = self.out_dir / result.study
                folder.mkdir(parents=True, exist_ok=True)
                for data, uid, modality in encoded:
                    atomic_write(folder / f"{modality}-{short_id(uid)}.dcm", data)
            for destination in self.destinations:
                for data, uid, _ in encoded:
                    self.outbox.put(data, destination, uid)
        except QueueFull:
            log.warning("the outgoing queue filled up; series %s waits in the spool", result.series)
            return False
        except OSError as exc:
            log.error("cannot write the results of series %s (%s)", result.series, exc.strerror or type(exc).__name__)
            self.stuck.add(work_dir)
            return True
        self.spool.release(work_dir)
        if self.destinations:
            log.info(
                "study %s: %d results queued for %s",
                result.study,
                len(encoded),
                ", ".join(map(_where, self.destinations)),
            )
        return True

    def drain(self) -> int:
        """Deliver every due item, one association or request per destination and chunk; returns how many
        were delivered."""
        by_destination = defaultdict(list)
        for item in self.outbox.due():
            by_destination[item.destination].append(item)
        sent = 0
        for destination, items in by_destination.items():
            for start in range(0, len(items), SEND_CHUNK):
                chunk = items[start : start + SEND_CHUNK]
                try:
                    results = deliver(
                        destination, [self.outbox.path(i) for i in chunk], self.calling_ae_title, self.tls
                    )
                except Exception as exc:  # whatever goes wrong on the way is a reason to try again
                    results = None
                    reason = type(exc).__name__
                retried, refused = [], []
                for k, item in enumerate(chunk):
                    outcome, detail = (
                        (Outcome.RETRY, reason) if results is None else (results[k].outcome, results[k].detail)
                    )
                    if outcome is Outcome.SENT:
                        self.outbox.delivered(item)
                        sent += 1
                    elif outcome is Outcome.RETRY:
                        retried.append((self.outbox.retry_later(item, detail), detail))
                    else:
                        self.outbox.give_up(item, detail)
                        refused.append(detail)
                if retried:
                    log.warning(
                        "%s: %d results not delivered (%s); next try in %.1f s",
                        _where(destination),
                        len(retried),
                        retried[0][1],
                        min(d for d, _ in retried),
                    )
                if refused:
                    log.error(
                        "%s refused %d results (%s); they are kept in %s",
                        _where(destination),
                        len(refused),
                        refused[0],
                        self.outbox.failed,
                    )
        if sent:
            log.info("delivered %d results", sent)
        return sent


def _where(destination: str) -> str:
    return destination.split(":", 1)[1] if ":" in destination else destination
