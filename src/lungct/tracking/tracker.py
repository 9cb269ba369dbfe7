"""MLflow tracking that can never cost a training run.

Every MLflow call goes through `Tracker._call`: the first failure (server down, bad URI, full disk) is logged
once as a warning and the tracker turns into a no-op, so the run itself goes on and writes its run directory
as always. mlflow is imported only when a run is actually tracked: it takes seconds to import.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungct.errors import one_line
from lungct.files import refuse_foreign_sqlite
from lungct.tracking.flatten import metric_items, param_items

if TYPE_CHECKING:
    from lungct.config import ExperimentConfig

log = logging.getLogger("lungct")

SWITCH_ENV = "LUNGCT_TRACKING"  # "off" (or 0/false/no) disables tracking, like --no-track
STORE_DIR = "mlruns"  # the project's default store: mlruns/mlflow.db and mlruns/artifacts/
_OFF = {"off", "0", "false", "no"}
_BATCH = 100  # MLflow's per-request limit for params (metrics allow 1000)
# MLflow retries an unreachable server for ~4 minutes by default; a tracking outage should cost seconds.
_HTTP_RETRIES_DEFAULT = "2"

_active: ContextVar[tuple[Tracker, ...]] = ContextVar("lungct_tracking_runs", default=())


def tracking_enabled(enabled: bool = True) -> bool:
    """False when the caller said so (--no-track), LUNGCT_TRACKING=off, or MLflow is not installed (the
    `mlops` extra): tracking is optional, so a training-only install trains untracked, with one warning."""
    if not enabled or os.environ.get(SWITCH_ENV, "on").strip().lower() in _OFF:
        return False
    if importlib.util.find_spec("mlflow") is None:
        _warn_untracked()
        return False
    return True


@functools.cache
def _warn_untracked() -> None:
    log.warning("MLflow is not installed, so this run is not tracked: pip install 'lungct[mlops]' to track it")


def default_tracking_uri(project: str | Path | None = None) -> str:
    """`sqlite:///<project>/mlruns/mlflow.db`, the project being the current directory."""
    db = Path(project or Path.cwd()).resolve() / STORE_DIR / "mlflow.db"
    return f"sqlite:///{db}"


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the project's local SQLite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0]).expanduser()


def mlflow_defaults() -> None:
    """What every MLflow client here starts with: a server that is down costs two retries, not ~4 minutes, and the
    SQLite store's schema set-up (alembic) logs nothing, once per store."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", _HTTP_RETRIES_DEFAULT)
    for chatty in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def prepare_sqlite_store(uri: str) -> None:
    """Make a SQLite store's folder, and refuse a database that another program owns (MLflow would add its tables
    to it; the prediction log and tune's study refuse such a file in the same way)."""
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        refuse_foreign_sqlite(db, "experiments", "MLflow")


def artifact_root(uri: str) -> Path | None:
    """Artifacts of a SQLite store live beside its database (mlruns/artifacts); servers choose their own."""
    db = sqlite_path(uri)
    return db.resolve().parent / "artifacts" if db else None


def error_line(exc: BaseException) -> str:
    """An MLflow, database or network error as one line: its type, then the first line of its message."""
    return f"{type(exc).__name__}: {one_line(exc, 300) or type(exc).__name__}"


class Tracker:
    """One MLflow run, or a no-op (tracking disabled or broken: then `run_id` is None)."""

    def __init__(self, client: Any = None, run_id: str | None = None, tracking_uri: str = "", experiment_id: str = ""):
        self._client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.logged_steps: set[int] = set()  # epochs already logged by epoch_callback (see log_history)

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """`client.<method>(run_id, ...)`, or nothing once tracking is off or broken."""
        if self.run_id is None or self._client is None:
            return None
        try:
            return getattr(self._client, method)(self.run_id, *args, **kwargs)
        except Exception as exc:  # any MLflow, network or disk error: warn once, then go on untracked
            log.warning("tracking: %s failed (%s); the run goes on without MLflow tracking", what, error_line(exc))
            self.run_id = None
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in param_items(params).items()]
        for i in range(0, len(items), _BATCH):
            self._call("logging parameters", "log_batch", params=items[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numeric values only; nested dicts become dotted keys."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in metric_items(metrics).items()]
        for i in range(0, len(items), _BATCH):
            self._call("logging metrics", "log_batch", metrics=items[i : i + _BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id is None or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call("setting tags", "log_batch", tags=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a folder's contents) into the run's artifacts; a missing path is skipped."""
        path = Path(path)
        if self.run_id is None:
            return
        if path.is_dir():
            self.log_artifacts(path, artifact_path)
        elif path.is_file():
            self._call(f"logging {path.name}", "log_artifact", str(path), artifact_path)
        else:
            log.debug("tracking: %s does not exist; not logged", path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        folder = Path(folder)
        if self.run_id is not None and folder.is_dir():
            self._call(f"logging {folder.name}/", "log_artifacts", str(folder), artifact_path)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        """Write `data` as the artifact `name` (.json or .yaml by its extension)."""
        if self.run_id is None:
            return
        plain = json.loads(json.dumps(data, default=str))  # Paths, numpy scalars: never a reason to fail
        self._call(f"logging {name}", "log_dict", plain, name)

    def epoch_callback(self) -> Callable[[dict], None]:
        """For `lungct.training.train(callbacks=[...])`: each epoch's history row as metrics at its step."""

        def on_epoch(row: dict) -> None:
            step = row.get("step")
            self.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "step")}, step=step)
            if step is not None:
                self.logged_steps.add(int(step))

        return on_epoch

    def end(self, status: str = "FINISHED") -> None:
        self._call("ending the run", "set_terminated", status)
        self.run_id = None


def experiment_id_for(client: Any, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(uri)
        location = (root / re.sub(r"[^\w.-]", "_", name)).as_uri() if root else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # another process created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _context_tags(tags: dict[str, str]) -> dict[str, str]:
    """MLflow's own source/user/git tags, as mlflow.start_run would set them."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {k: str(v) for k, v in resolve_tags(tags).items()}
    except Exception:
        return tags


def _start(
    kind: str,
    name: str,
    uri: str,
    experiment: str,
    tags: Mapping[str, Any] | None,
    parent: Tracker | None,
) -> Tracker:
    mlflow_defaults()
    try:
        prepare_sqlite_store(uri)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp_id = parent.experiment_id if parent else experiment_id_for(client, experiment, uri)
        run_tags = {"lungct.kind": kind, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent:
            run_tags["mlflow.parentRunId"] = str(parent.run_id)
        run = client.create_run(exp_id, tags=_context_tags(run_tags), run_name=name)
    except Exception as exc:  # bad URI, server down, unwritable folder: train anyway
        log.warning("tracking: cannot start an MLflow run at %s (%s); going on without tracking", uri, error_line(exc))
        return Tracker()
    log.info("tracking: MLflow run %s (%s) in experiment %r at %s", run.info.run_id, name, experiment, uri)
    return Tracker(client, run.info.run_id, uri, exp_id)


@contextmanager
def tracked_run(
    kind: str,
    name: str,
    params: dict | None = None,
    config: ExperimentConfig | None = None,
    tracking_uri: str | None = None,
    tags: dict | None = None,
    nested: bool = False,
    *,
    enabled: bool = True,
    experiment: str | None = None,
) -> Iterator[Tracker]:
    """An MLflow run around a train/evaluate/cv/tune call; yields a Tracker (a no-op when tracking is off).

    The experiment is `experiment`, else MLFLOW_EXPERIMENT_NAME, else the config's name, else "lungct".
    With `config`, its flattened resolved fields are the run's parameters (e.g. `train.phase1.lr`) and the
    config itself is logged as config.yaml. `nested=True` makes the run a child of the innermost open
    tracked_run (same store and experiment). The run ends FINISHED, or FAILED/KILLED when the body raises.
    """
    stack = _active.get()
    parent = stack[-1] if nested and stack else None
    if not tracking_enabled(enabled) or (parent is not None and not parent.active):
        yield Tracker()
        return
    uri = parent.tracking_uri if parent and tracking_uri is None else resolve_tracking_uri(tracking_uri)
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or (config.name if config else "lungct")
    tracker = _start(kind, name, uri, experiment, tags, parent)
    if config is not None:
        resolved = config.model_dump(mode="json")
        tracker.log_params(resolved)
        tracker.log_dict(resolved, "config.yaml")
    if params:
        tracker.log_params(params)
    token = _active.set((*stack, tracker))
    status = "FINISHED"
    try:
        yield tracker
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        _active.reset(token)
        tracker.end(status)
