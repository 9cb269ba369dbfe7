"""`lungct dicom-listen` (a DICOM Storage SCP) and `lungct dicomweb` (WADO-RS in, STOW-RS out): lungct in the
radiology workflow, results returned to the study as DICOM (docs/pacs.md)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lungct.cli.options import Quiet, setup_logging
from lungct.errors import LungCTError

log = logging.getLogger("lungct")


class Aggregate(StrEnum):
    max = "max"
    mean = "mean"
    topk = "topk"


Run = Annotated[Path, typer.Option("--run", exists=True, file_okay=False, help="run directory")]
State = Annotated[
    Path,
    typer.Option("--state", file_okay=False, help="folder for the spool and the outgoing queue (kept across restarts)"),
]
Out = Annotated[Path | None, typer.Option("--out", file_okay=False, help="also write the result .dcm files here")]
AggregateOpt = Annotated[Aggregate, typer.Option("--aggregate", help="study score from slices")]
TopK = Annotated[int, typer.Option("--top-k", min=1, help="slices for topk (and named for mean)")]
PositiveClass = Annotated[str | None, typer.Option("--positive-class", help="class scored per study")]
Threshold = Annotated[
    float | None,
    typer.Option("--threshold", help="operating point (default: RUN/operating_points.json, else 0.5)"),
]
SpoolLimit = Annotated[int, typer.Option("--spool-limit-mb", min=1, help="most MiB of received instances on disk")]
QueueLimit = Annotated[int, typer.Option("--queue-limit-mb", min=1, help="most MiB of results waiting to be sent")]
# Every time option has a finite upper bound: "inf" passed min= alone, and a series or a retry was then never due.
DAY = 86_400.0
RetryInitial = Annotated[
    float, typer.Option("--retry-initial", min=0.01, max=DAY, help="seconds before the first retry")
]
RetryMax = Annotated[
    float, typer.Option("--retry-max", min=0.01, max=DAY, help="longest wait between retries, seconds")
]
PredictionLogOpt = Annotated[
    Path | None, typer.Option("--prediction-log", dir_okay=False, help="SQLite prediction log (lungct drift reads it)")
]


def _quiet_libraries() -> None:
    """pydicom warns with the offending value (which can be a patient's name), pynetdicom's INFO lines list
    every request and dicomweb-client's DEBUG lines show the Authorization header: none belongs in our log."""
    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its DEBUG lines print request headers
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines name every source instance


@dataclass(frozen=True)
class PipelineOptions:
    """The options dicom-listen and dicomweb share: where state lives, how a series is judged, the limits."""

    run: Path
    state: Path
    out: Path | None
    aggregate: Aggregate
    top_k: int
    positive_class: str | None
    threshold: float | None
    spool_limit_mb: float
    queue_limit_mb: float
    retry_initial: float
    retry_max: float
    prediction_log: Path | None

    @classmethod
    def named(cls, options: dict) -> PipelineOptions:
        """From a command's options (its locals()): both commands name these options as the fields are named."""
        return cls(**{f.name: options[f.name] for f in fields(cls)})


def _pipeline(o: PipelineOptions, destinations: list, ae_title: str = "LUNGCT", tls=None):
    """The spool, queue and analyser both commands share, built from their options."""
    from lungct.pacs.analysis import Analyzer
    from lungct.pacs.outbox import Outbox
    from lungct.pacs.pipeline import Pipeline
    from lungct.pacs.spool import Spool

    try:
        spool = Spool(o.state / "spool", o.spool_limit_mb * 2**20)
        outbox = Outbox(o.state / "outbox", o.queue_limit_mb * 2**20, o.retry_initial, o.retry_max)
        if o.out is not None:
            o.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LungCTError(f"cannot use the state folder {o.state}: {exc.strerror or exc}") from None
    sink = None
    if o.prediction_log is not None:
        from lungct.monitoring.predlog import PredictionLog

        sink = PredictionLog(o.prediction_log)
    analyzer = Analyzer(o.run, o.aggregate.value, o.top_k, o.positive_class, o.threshold, sink)
    return Pipeline(analyzer, spool, outbox, destinations, o.out, ae_title, tls)


def dicom_listen_command(
    run: Run,
    ae_title: Annotated[str, typer.Option("--ae-title", help="this node's AE title")] = "LUNGCT",
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on")] = 11112,
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "0.0.0.0",
    series_timeout: Annotated[
        float,
        typer.Option(
            "--series-timeout", min=0, max=DAY, help="seconds without a new instance before a series is analysed"
        ),
    ] = 10.0,
    forward: Annotated[
        list[str] | None, typer.Option("--forward", help="C-STORE results to HOST:PORT:AET (repeatable)")
    ] = None,
    stow: Annotated[str | None, typer.Option("--stow", help="store results to this DICOMweb URL (STOW-RS)")] = None,
    allow_ae: Annotated[
        list[str] | None,
        typer.Option("--allow-ae", help="accept associations only from this calling AE title (repeatable)"),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="DICOM TLS: this node's certificate (PEM); needs --tls-key")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="DICOM TLS: its private key (PEM)")] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option("--tls-ca", help="DICOM TLS: accept only senders with a certificate signed by this CA (PEM)"),
    ] = None,
    forward_tls: Annotated[
        bool,
        typer.Option(
            "--forward-tls", help="send --forward results over DICOM TLS (checked against --tls-ca, showing --tls-cert)"
        ),
    ] = False,
    out: Out = None,
    state: State = Path("lungct-pacs"),
    aggregate: AggregateOpt = Aggregate.max,
    top_k: TopK = 3,
    positive_class: PositiveClass = None,
    threshold: Threshold = None,
    spool_limit_mb: SpoolLimit = 4096,
    queue_limit_mb: QueueLimit = 1024,
    retry_initial: RetryInitial = 2.0,
    retry_max: RetryMax = 300.0,
    prediction_log: PredictionLogOpt = None,
    quiet: Quiet = False,
) -> None:
    """Receive CT series as a DICOM Storage SCP, analyse each when it is quiet, return the SR and Grad-CAM overlay.

    SIGTERM or Ctrl-C stops it after the current step; SIGUSR1 analyses every spooled series at once.
    """
    from lungct.pacs.nodes import check_ae_title, check_port, parse_node
    from lungct.pacs.send import cstore_destination, stow_destination

    setup_logging(quiet, server=True)
    _quiet_libraries()
    check_ae_title(ae_title, "--ae-title")
    for sender in allow_ae or ():
        check_ae_title(sender, "--allow-ae")
    ssl_context = sending_tls = None
    if (tls_cert is None) != (tls_key is None):
        raise LungCTError("DICOM TLS needs both --tls-cert and --tls-key")
    if tls_cert is not None:
        from lungct.pacs.tls import server_context

        ssl_context = server_context(tls_cert, tls_key, tls_ca)
    elif tls_ca is not None and not forward_tls:
        raise LungCTError("--tls-ca needs --tls-cert and --tls-key (to receive over DICOM TLS) or --forward-tls")
    if forward_tls:
        from lungct.pacs.tls import client_context

        if not forward:
            raise LungCTError("--forward-tls: there is no --forward destination to send to over DICOM TLS")
        sending_tls = client_context(tls_ca, tls_cert, tls_key)
    check_port(port, "--port")
    destinations = [cstore_destination(parse_node(f)) for f in forward or []]
    if stow:
        destinations.append(stow_destination(stow))
    if not destinations and out is None:
        raise LungCTError("results would go nowhere: give --forward HOST:PORT:AET, --stow URL and/or --out DIR")
    from lungct.pacs.listener import Listener

    options = PipelineOptions.named(locals())
    pipeline = _pipeline(options, destinations, ae_title, sending_tls)
    listener = Listener(
        pipeline, pipeline.spool, ae_title, port, host, series_timeout, tuple(allow_ae or ()), ssl_context
    )
    try:
        listener.start()
    except OSError as exc:
        raise LungCTError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: listener.trigger.set())
    try:
        while not done.wait(0.5) and not listener.stopping.is_set():
            pass
    finally:
        log.info("stopping: spooled series and queued results stay in %s for the next start", state)
        listener.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if listener.fatal:
        raise LungCTError(listener.fatal)


def dicomweb_command(
    url: Annotated[str, typer.Option("--url", help="DICOMweb base URL, e.g. http://pacs:8042/dicom-web")],
    study: Annotated[str, typer.Option("--study", help="StudyInstanceUID to analyse")],
    run: Run,
    out: Out = None,
    store: Annotated[bool, typer.Option("--store/--no-store", help="store the results back (STOW-RS)")] = True,
    state: State = Path("lungct-pacs"),
    wait: Annotated[float, typer.Option("--wait", min=0, max=DAY, help="seconds to keep retrying the store")] = 60.0,
    aggregate: AggregateOpt = Aggregate.max,
    top_k: TopK = 3,
    positive_class: PositiveClass = None,
    threshold: Threshold = None,
    spool_limit_mb: SpoolLimit = 4096,
    queue_limit_mb: QueueLimit = 1024,
    retry_initial: RetryInitial = 2.0,
    retry_max: RetryMax = 30.0,
    prediction_log: PredictionLogOpt = None,
    quiet: Quiet = False,
) -> None:
    """Retrieve a study over DICOMweb (WADO-RS), analyse its CT series, store the SR and overlay back (STOW-RS).

    Credentials come from the environment only: LUNGCT_DICOMWEB_USER and LUNGCT_DICOMWEB_PASSWORD (basic),
    or LUNGCT_DICOMWEB_TOKEN (bearer).
    """
    from lungct.pacs.dicomweb import session_from_env
    from lungct.pacs.pull import check_uid, pull_study
    from lungct.pacs.send import stow_destination

    setup_logging(quiet)
    _quiet_libraries()
    check_uid(study)
    session_from_env()  # a half-set credential is one clear line before anything is loaded
    destinations = [stow_destination(url)] if store else []
    if not destinations and out is None:
        raise LungCTError("results would go nowhere: drop --no-store or give --out DIR")
    options = PipelineOptions.named(locals())
    pipeline = _pipeline(options, destinations)
    summary = pull_study(url, study, pipeline, wait)
    typer.echo(json.dumps(asdict(summary)))
    if summary.waiting:
        raise LungCTError(
            f"{summary.waiting} results are not stored yet; they wait in {state / 'outbox'} and go with the next "
            "`lungct dicomweb` run"
        )
