"""The shapes lungct's parts exchange, defined once: names (enums), results and the records around a run.

Everything that crosses a module boundary as data (a prediction, a metrics report, a run's summary, the
model card) has one definition here, so the CLI, the API, the app, tracking and reports cannot drift apart.
Only the standard library and pydantic are imported: every layer may use this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class SplitPart(StrEnum):
    """The parts of a split.csv. `calib` is optional: whole groups held out for calibration only."""

    train = "train"
    val = "val"
    calib = "calib"
    test = "test"


class DicomWindow(StrEnum):
    """How a DICOM slice's Hounsfield units become pixels: a preset window, the file's own, or three windows
    stacked as RGB channels (lung, mediastinal, bone)."""

    lung = "lung"
    mediastinal = "mediastinal"
    file = "file"
    stack3 = "stack3"


class CamMethod(StrEnum):
    """Class-activation-map methods (pytorch-grad-cam)."""

    gradcam = "gradcam"
    gradcampp = "gradcam++"
    eigencam = "eigencam"
    scorecam = "scorecam"


class Backend(StrEnum):
    """Which engine runs a model: ONNX Runtime when an exported graph matches the run, else PyTorch."""

    auto = "auto"
    onnx = "onnx"
    torch = "torch"


# -- metrics (metrics.json of `lungct evaluate`, one row of `lungct cv`, MLflow metrics, leaderboard CSV) ----


def interval_items(name: str, interval: Sequence[float | None] | None) -> dict[str, float | None]:
    """A 95% interval as two flat columns, `<name>_ci95_low` and `<name>_ci95_high`."""
    low, high = (interval[0], interval[1]) if interval is not None and len(interval) == 2 else (None, None)
    return {f"{name}_ci95_low": low, f"{name}_ci95_high": high}


def flat_metrics(metrics: Mapping[str, Any], intervals: bool = False) -> dict[str, float | None]:
    """The one flattening of a metrics report: its scalar numbers (not the count `n`), per-class ones as
    `<class>.<metric>` (support left out), and with `intervals` every ci95 as `<name>_ci95_low/high`."""
    flat: dict[str, float | None] = {
        k: v
        for k, v in metrics.items()
        if k != "n" and (v is None or isinstance(v, int | float)) and not isinstance(v, bool)
    }
    for name, per_class in (metrics.get("classes") or {}).items():
        for key, value in per_class.items():
            if key != "support":
                flat[f"{name}.{key}"] = value
    if intervals:
        for name, interval in (metrics.get("ci95") or {}).items():
            flat.update(interval_items(name, interval))
    return flat


class ClassMetrics(BaseModel):
    """One class against the rest."""

    model_config = ConfigDict(extra="allow")

    precision: float | None = None
    recall: float | None = None
    specificity: float | None = None
    f1: float | None = None
    auc: float | None = None
    support: int = 0


class Metrics(BaseModel):
    """metrics.json: what `lungct evaluate` measured on one set of labelled images (keys as written there)."""

    model_config = ConfigDict(extra="allow")

    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float | None = None
    macro_auc: float | None = None
    ece: float | None = None
    classes: dict[str, ClassMetrics]
    ci95: dict[str, list[float] | None] = Field(default_factory=dict)
    ci95_method: str = ""
    tta: bool = False
    calibrated: bool = False

    def flat(self, intervals: bool = False) -> dict[str, float | None]:
        return flat_metrics(self.model_dump(), intervals)


# -- a run's summary.json ----------------------------------------------------------------------------------


class RunSummary(BaseModel):
    """summary.json of a run directory: where training stands, what it trained on and how long it took.
    A run without summary.json reads as status None."""

    model_config = ConfigDict(extra="allow")

    status: Literal["running", "complete"] | None = None
    name: str = ""
    arch: str = ""
    pretrained: bool = False
    weights: str = ""
    split_mode: str = ""
    counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    skipped: list[dict[str, str]] = Field(default_factory=list)
    train_seconds: float | None = None

    @property
    def complete(self) -> bool:
        return self.status == "complete"


# -- predictions (one shape for the CLI, the API, the app, DICOM series and the prediction log) -------------
# (section owned by the inference-service work)
