"""The shapes lungct's parts exchange, defined once: names (enums), results and the records around a run.

Everything that crosses a module boundary as data (a prediction, a metrics report, a run's summary, the
model card) has one definition here, so the CLI, the API, the app, tracking and reports cannot drift apart.
Only the standard library and pydantic are imported: every layer may use this module.
"""

from __future__ import annotations

from enum import StrEnum


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


# -- predictions (one shape for the CLI, the API, the app, DICOM series and the prediction log) -------------
# (section owned by the inference-service work)
