"""The shapes lungct's parts exchange, defined once: names (enums), results and the records around a run.

Everything that crosses a module boundary as data (a prediction, a metrics report, a run's summary, the
model card) has one definition here, so the CLI, the API, the app, tracking and reports cannot drift apart.
Only the standard library and pydantic are imported: every layer may use this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class CalibrationMethod(StrEnum):
    """How `lungct calibrate` maps probabilities (lungct.inference.calibration)."""

    temperature = "temperature"
    isotonic = "isotonic"


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
    # the ECE range a perfectly calibrated model would score on these images (lungct.evaluation.consistency)
    ece_consistency: dict[str, float | str] | None = None
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

# Served predictions name the engine that ran; "auto" is a request, never an answer.
ServedBackend = Literal[Backend.onnx, Backend.torch]


def _unknown(value: object) -> bool:
    return value is None


class Prediction(BaseModel):
    """One image's prediction: the predicted class, its probability, every class's probability (calibrated
    when the run is, rounded to 6 decimals), and, when known, the input and the model that answered.

    One model for every producer (Predictor, the inference service behind the REST API and the web app, DICOM
    series, the prediction log), so none can drift from another. Its JSON spelling is the REST API's, which
    is a public contract: attribute `name` is `file`, `predicted` is `label` and `probability` is
    `confidence` (serialization aliases; dumps use them by default, and both spellings are accepted on input).
    `model_dump(by_alias=False)` gives the attribute names (the web app's result). Context that is not known
    (None) is left out of every dump: a batch item carries no model_version, a `lungct predict` line no sha256.
    """

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    name: str | None = Field(
        None,
        alias="file",
        exclude_if=_unknown,
        description="the upload's file name, last path component only; shown back, never logged",
    )
    predicted: str = Field(alias="label", description="the predicted class (the highest probability)")
    probability: float = Field(alias="confidence", description="calibrated probability of label")
    probabilities: dict[str, float] = Field(description="every class's probability, calibrated when the run is")
    sha256: str | None = Field(None, exclude_if=_unknown, description="of the uploaded bytes; the prediction log's key")
    latency_ms: float | None = Field(None, exclude_if=_unknown)
    model_version: str | None = Field(None, exclude_if=_unknown)
    backend: ServedBackend | None = Field(None, exclude_if=_unknown)
    familiar: bool | None = Field(
        None,
        exclude_if=_unknown,
        description="whether the input is like the model's training images (absent when the run has no familiarity "
        "reference): false for a figure, a screenshot, an inverted slice or another modality, whose label means "
        "little",
    )
    novelty: float | None = Field(
        None,
        exclude_if=_unknown,
        description="distance of the input's features from the training images over the threshold; above 1 is "
        "unfamiliar",
    )
    prediction_id: str | None = Field(
        None,
        exclude_if=_unknown,
        description="this answer's id in the prediction log; POST it to /v1/feedback to correct the label "
        "(absent when the server does not log predictions)",
    )

    @model_validator(mode="before")
    @classmethod
    def _probability_of_label(cls, data: Any) -> Any:
        """`confidence` is probabilities[label]: given both, the record needs neither twice."""
        if isinstance(data, dict) and "probability" not in data and "confidence" not in data:
            label, probabilities = data.get("predicted", data.get("label")), data.get("probabilities")
            if isinstance(probabilities, Mapping) and label in probabilities:
                data = {**data, "probability": probabilities[label]}
        return data

    @model_validator(mode="after")
    def _label_is_a_class(self) -> Prediction:
        if self.predicted not in self.probabilities:
            raise ValueError(f"label {self.predicted!r} is not one of the classes {list(self.probabilities)}")
        return self

    @classmethod
    def from_probabilities(cls, classes: Sequence[str], probabilities: Sequence[float], **context: Any) -> Prediction:
        """The prediction for one row of model output (any sequence of floats, a numpy row included): the
        first class with the highest probability, as numpy's argmax picks it; `context` sets name, sha256, ..."""
        values = [float(p) for p in probabilities]
        if len(values) != len(classes) or not values:
            raise ValueError(f"{len(values)} probabilities for {len(classes)} classes")
        best = classes[max(range(len(values)), key=values.__getitem__)]
        rounded = {c: round(v, 6) for c, v in zip(classes, values, strict=True)}
        return cls(predicted=best, probability=rounded[best], probabilities=rounded, **context)


class ErrorDetail(BaseModel):
    """Why one file was not predicted: a stable code, a message naming the file, and the HTTP status it has
    when it is the whole answer."""

    code: str
    message: str
    status: int


class FileError(BaseModel):
    """A file of a batch that could not be predicted; the other files still are. `name` is `file` in JSON."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    name: str = Field(alias="file", description="the upload's (or zip member's) file name, last component only")
    error: ErrorDetail
