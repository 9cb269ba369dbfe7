"""MLflow Model Registry for lungct runs: every registered run is a version of one model, and the aliases
`champion` (in service) and `challenger` (the latest candidate) say which is which.

- `promote(run)`: registers the run (its model files, exports, calibration, config, metrics) as a new version
  unless it is registered already, points `challenger` at it, and moves `champion` to it when the run's
  promotion.json (lungct retrain) says promote **and** names the current champion as the model it was compared
  with. The first run of an empty registry becomes champion without a comparison.
- `rollback()`: `champion` goes back to the version it pointed at before the last move (kept in the registered
  model's tag `lungct.previous_champion`); a second rollback undoes the first.

Versions are matched to runs by lungct's model version (tag `lungct.model_version`), the hash of weights and
calibration, not by folder names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lungct.errors import LungCTError
from lungct.run import RunDir, model_version
from lungct.tracking.tracker import (
    error_line,
    experiment_id_for,
    mlflow_defaults,
    prepare_sqlite_store,
    resolve_tracking_uri,
    sqlite_path,
)

MODEL_NAME = "lungct"
EXPERIMENT = "lungct-registry"
CHAMPION, CHALLENGER = "champion", "challenger"
VERSION_TAG = "lungct.model_version"
PREVIOUS_TAG = "lungct.previous_champion"
# what a registered version holds: enough to serve, explain and audit it (not checkpoints or prediction logs)
FILES = (
    "model.json",
    "model.safetensors",
    "calibration.json",
    "config.yaml",
    "split.csv",
    "summary.json",
    "model.onnx",
    "export.json",
    "model.int8.onnx",
    "export.int8.json",
    "promotion.json",
    "eval/metrics.json",
)

log = logging.getLogger("lungct")


class Registry:
    def __init__(self, tracking_uri: str | None = None, name: str = MODEL_NAME, create: bool = True):
        """`create=False` for readers (serving a registered model, a rollback): a store that does not exist yet is
        an error naming it, not a new empty database at a mistyped path."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        mlflow_defaults()
        self.uri = resolve_tracking_uri(tracking_uri)
        self.name = name
        self._missing = MlflowException
        db = sqlite_path(self.uri)
        if not create and db is not None and not db.is_file():
            raise LungCTError(f"no model registry at {self.uri}: {db} does not exist")
        try:
            prepare_sqlite_store(self.uri)
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            try:
                self.client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                self.client.create_registered_model(name, description="lungct: lung CT slice classifiers")
        except LungCTError:
            raise
        except Exception as exc:  # a bad scheme, a file that is no database, a server down: MLflow's own traceback
            raise LungCTError(f"the model registry at {self.uri} cannot be used: {error_line(exc)}") from None

    # -- reading ----------------------------------------------------------------------------------------------
    def alias(self, alias: str) -> str | None:
        """The version an alias points at, or None."""
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except self._missing:
            return None

    def version_of(self, lungct_version: str) -> str | None:
        for mv in self.client.search_model_versions(f"name='{self.name}'"):
            if (mv.tags or {}).get(VERSION_TAG) == lungct_version:
                return str(mv.version)
        return None

    def lungct_version(self, version: str) -> str:
        return (self.client.get_model_version(self.name, version).tags or {}).get(VERSION_TAG, "")

    def status(self) -> dict[str, Any]:
        out = {"model": self.name, "tracking_uri": self.uri}
        for alias in (CHAMPION, CHALLENGER):
            version = self.alias(alias)
            out[alias] = (
                None if version is None else {"version": version, "model_version": self.lungct_version(version)}
            )
        out["previous_champion"] = self._previous()
        return out

    def _previous(self) -> str | None:
        return (self.client.get_registered_model(self.name).tags or {}).get(PREVIOUS_TAG)

    # -- writing ----------------------------------------------------------------------------------------------
    def register(self, run_dir: str | Path) -> str:
        """The run's registry version, registering it first if needed."""
        run = RunDir(run_dir)
        run.require_model()
        lungct_version = model_version(run)
        existing = self.version_of(lungct_version)
        if existing is not None:
            return existing
        experiment = experiment_id_for(self.client, EXPERIMENT, self.uri)
        mlrun = self.client.create_run(
            experiment, run_name=f"register {run.path.name}", tags={VERSION_TAG: lungct_version}
        )
        for rel in FILES:
            path = run.path / rel
            if path.is_file():
                folder = Path("model", rel).parent.as_posix()  # model, or model/eval
                self.client.log_artifact(mlrun.info.run_id, str(path), folder)
        self.client.set_terminated(mlrun.info.run_id)
        mv = self.client.create_model_version(
            self.name,
            source=f"{mlrun.info.artifact_uri}/model",
            run_id=mlrun.info.run_id,
            tags={VERSION_TAG: lungct_version, "lungct.run": str(run.path.resolve())},
        )
        return str(mv.version)

    def set_champion(self, version: str) -> None:
        """Point `champion` at a version, remembering the one it leaves for --rollback."""
        self._move_champion(version)

    def download(self, alias: str, cache: Path) -> tuple[str, Path]:
        """(version, local run folder) of the version an alias points at, downloaded once into `cache`."""
        import mlflow.artifacts

        version = self.alias(alias)
        if version is None:
            raise LungCTError(f"model {self.name!r} has no version with the alias {alias!r} at {self.uri}")
        target = cache / f"{self.name}-v{version}"  # lungct's model version then reads "<name>-v<version>-..."
        if not (target / "model.json").is_file():
            source = self.client.get_model_version(self.name, version).source
            partial = cache / f".{self.name}-v{version}.partial"
            partial.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(partial), tracking_uri=self.uri)
            (partial / "model").rename(target)  # whole or not at all: a half download is never served
            partial.rmdir()
        return version, target

    def _move_champion(self, version: str) -> None:
        previous = self.alias(CHAMPION)
        if previous is not None and previous != version:
            self.client.set_registered_model_tag(self.name, PREVIOUS_TAG, previous)
        self.client.set_registered_model_alias(self.name, CHAMPION, version)

    def promote(self, run_dir: str | Path) -> dict[str, Any]:
        """Register the run as `challenger`; make it `champion` when its promotion.json allows (see the module)."""
        run = RunDir(run_dir)
        decision_path = run.path / "promotion.json"
        decision = _read_decision(decision_path)  # before registering: a damaged file leaves the registry as it was
        version = self.register(run.path)
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        champion = self.alias(CHAMPION)
        if champion is None:
            self._move_champion(version)
            return {"promoted": True, "champion": version, "reason": "the registry had no champion"}
        if champion == version:
            return {"promoted": False, "champion": version, "reason": "this run is the champion already"}
        if decision is None:
            raise LungCTError(
                f"{run.path} has no promotion.json: only a challenger from `lungct retrain` can replace the champion"
            )
        compared_with = decision.get("champion", {}).get("model_version")
        if compared_with != self.lungct_version(champion):
            raise LungCTError(
                f"{run.path} was compared with {compared_with}, but the champion is now version {champion} "
                f"({self.lungct_version(champion)}): retrain against the current champion"
            )
        if not decision.get("promote"):
            return {
                "promoted": False,
                "champion": champion,
                "challenger": version,
                "reason": "refused by the gate: " + "; ".join(decision.get("reasons", [])),
            }
        self._move_champion(version)
        return {"promoted": True, "champion": version, "previous": champion, "reason": "the gate passed"}

    def rollback(self) -> dict[str, Any]:
        previous, current = self._previous(), self.alias(CHAMPION)
        if previous is None or current is None:
            raise LungCTError(f"nothing to roll back: model {self.name!r} has no previous champion")
        self._move_champion(previous)
        return {"champion": previous, "rolled_back": current}


def _read_decision(path: Path) -> dict[str, Any] | None:
    """promotion.json (lungct retrain's decision), None when absent; a LungCTError when it is not the object
    retrain writes, since a damaged decision must neither promote nor end in a traceback."""
    if not path.is_file():
        return None
    try:
        decision = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LungCTError(f"{path} is damaged ({type(exc).__name__}): run `lungct retrain` again") from None
    champion = decision.get("champion") if isinstance(decision, dict) else None
    if not isinstance(champion, dict) or not champion.get("model_version") or "promote" not in decision:
        # retrain writes the champion it was compared with and its verdict; without them the check below would
        # report "compared with None" or promote on a missing verdict
        raise LungCTError(f"{path} is damaged: it is not the decision `lungct retrain` writes; run it again")
    return decision


def parse_model_uri(uri: str) -> tuple[str, str]:
    """`models:/NAME@ALIAS` -> (NAME, ALIAS); anything else is a clear error."""
    prefix = "models:/"
    if not uri.startswith(prefix) or "@" not in uri[len(prefix) :]:
        raise LungCTError(f"model URI {uri!r} is not models:/NAME@ALIAS (e.g. models:/lungct@champion)")
    name, alias = uri[len(prefix) :].split("@", 1)
    if not name or not alias or "/" in name:
        raise LungCTError(f"model URI {uri!r} is not models:/NAME@ALIAS (e.g. models:/lungct@champion)")
    return name, alias
