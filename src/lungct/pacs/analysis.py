"""One received series to its results: the study-level prediction of `lungct predict-series` (the same
function, so the numbers agree), the decision at the run's operating point, Grad-CAM of the driving slice,
and the SR and Secondary Capture that carry them back to the study.

The run's operating point is `--threshold` when given, else the threshold in RUN/operating_points.json
(`lungct threshold --run RUN --out RUN` writes it), else 0.5, the default of `lungct predict-series`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from lungct.contracts import Prediction
from lungct.dicom.hounsfield import default_window
from lungct.dicom.series import load_series
from lungct.dicom.window import to_image
from lungct.errors import LungCTError
from lungct.inference.familiarity import is_familiar
from lungct.inference.study import predict_series, resolve_positive_class
from lungct.pacs.ids import short_id
from lungct.pacs.results import ModelInfo, StudyFinding, blend, build_overlay, build_sr
from lungct.run import RunDir, model_version

log = logging.getLogger("lungct.pacs")


def operating_threshold(run_dir: str | Path, requested: float | None, positive_class: str) -> tuple[float, str]:
    """(threshold, where it comes from): the option, the run's operating_points.json, or 0.5."""
    if requested is not None:
        if not 0.0 <= requested <= 1.0:
            raise LungCTError(f"--threshold must be between 0 and 1, got {requested}")
        return float(requested), "--threshold"
    path = Path(run_dir) / "operating_points.json"
    if not path.is_file():
        return 0.5, "default"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(report["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        raise LungCTError(f"{path} is damaged: it has no threshold; run `lungct threshold` again") from None
    if report.get("positive_class", positive_class) != positive_class:
        raise LungCTError(
            f"{path} is for positive class {report.get('positive_class')!r}, not {positive_class!r}; "
            "pass --threshold or --positive-class"
        )
    return threshold, f"operating_points.json, sensitivity {report.get('target_sensitivity', '?')}"


@dataclass
class SeriesResult:
    finding: StudyFinding
    objects: list[Dataset]  # the SR, then the Secondary Capture (none when Grad-CAM cannot explain the model)
    n_slices: int
    study: str  # short ids for logs
    series: str


class Analyzer:
    """Turns series folders into results with one run. The run's card, positive class and operating point are
    checked when it is made; the model (PyTorch and Grad-CAM, seconds to import) loads on `load()` or the first
    analysis, so a listener answers and delivers queued results before it is ready to analyse."""

    def __init__(
        self,
        run_dir: str | Path,
        aggregate: str = "max",
        top_k: int = 3,
        positive_class: str | None = None,
        threshold: float | None = None,
        prediction_log=None,  # a lungct.inference.service.PredictionSink, e.g. monitoring's PredictionLog
    ):
        run = RunDir(run_dir)
        card = run.card()
        self.run_dir = Path(run_dir)
        self.classes = tuple(card.classes)
        self.positive = resolve_positive_class(list(self.classes), card.positive_class, positive_class)
        self.threshold, self.threshold_source = operating_threshold(run_dir, threshold, self.positive)
        self.aggregate, self.top_k = aggregate, top_k
        self.model = ModelInfo(model_version(run), card.arch, self.classes)
        self.color = card.preprocess.color
        self.window = default_window(self.color, getattr(card.preprocess, "dicom_window", None))
        self.sink = prediction_log
        self._explainer = None

    def load(self):
        """The run's Explainer (and so its Predictor), loaded once; a LungCTError when the run is broken."""
        if self._explainer is None:
            from lungct.explain import Explainer

            self._explainer = Explainer(self.run_dir, batch_size=8)
        return self._explainer

    @property
    def loaded(self) -> bool:
        return self._explainer is not None

    @property
    def predictor(self):
        return self.load().predictor

    def analyse(self, folder: Path) -> SeriesResult:
        """Predict the series in `folder` and build its result objects; a LungCTError when it cannot be used."""
        started = time.perf_counter()
        series = load_series(folder)
        result = predict_series(
            self.predictor, series, self.aggregate, self.top_k, self.positive, self.threshold, self.window
        )
        study = result.study
        # the files as received, with the patient module the results must carry (never logged)
        sources = [pydicom.dcmread(folder / s.name, stop_before_pixels=True) for s in series.slices]
        driving = [d["slice"] for d in study["driving_slices"]]
        finding = StudyFinding(
            positive_class=self.positive,
            aggregate=study["aggregate"],
            score=study["score"],
            threshold=self.threshold,
            threshold_source=self.threshold_source,
            label=study["label"],
            driving=driving,
            probabilities=[line["probabilities"] for line in result.slices],
            novelty=[line["novelty"] for line in result.slices] if "unfamiliar_slices" in study else None,
        )
        first = sources[0]
        seed = [
            self.model.version,
            str(first.SeriesInstanceUID),
            *sorted(str(s.SOPInstanceUID) for s in sources),
            f"{self.aggregate}/{self.top_k}/{self.positive}/{self.threshold}",
        ]
        top = series.slices[driving[0]]
        image = to_image(top.dataset, self.window, self.color, top.name)
        objects = [build_sr(sources, finding, self.model, seed)]
        try:
            explanation = self.load().explain_images([image], target=self.positive)[0]
        except LungCTError as exc:  # a model Grad-CAM cannot explain still gets its report
            log.warning("no Grad-CAM overlay for series %s: %s", short_id(first.SeriesInstanceUID), exc)
        else:
            objects.append(
                build_overlay(sources[driving[0]], blend(image, explanation.heatmap), finding, self.model, seed)
            )
        latency = (time.perf_counter() - started) * 1000
        if self.sink is not None:
            self._log(folder, series, finding, latency)
        return SeriesResult(
            finding, objects, len(series.slices), short_id(first.StudyInstanceUID), short_id(first.SeriesInstanceUID)
        )

    def _log(self, folder: Path, series, finding: StudyFinding, latency_ms: float) -> None:
        """One prediction-log row per slice: content hash, probabilities, intensity statistics; no tag."""
        color = self.color
        novelty = finding.novelty or [None] * len(series.slices)
        for s, probs, slice_novelty in zip(series.slices, finding.probabilities, novelty, strict=True):
            digest = hashlib.sha256((folder / s.name).read_bytes()).hexdigest()
            prediction = Prediction.from_probabilities(
                list(self.classes),
                [probs[c] for c in self.classes],
                sha256=digest,
                model_version=self.model.version,
                latency_ms=round(latency_ms / len(series.slices), 3),
                novelty=slice_novelty,
                familiar=None if slice_novelty is None else is_familiar(slice_novelty),
            )
            stats = self.sink.image_stats(to_image(s.dataset, self.window, color, s.name))
            self.sink.record(prediction, stats=stats, embedding=None, source="pacs")
