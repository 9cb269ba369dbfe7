"""The API's inference service: lungct.inference.service.InferenceService configured by ServeSettings, with
Grad-CAM (lungct.explain) and the prediction log (lungct.monitoring) plugged in, plus the run's test metrics.

Decoding, limits, prediction, explanation and logging live in lungct.inference.service, shared with the web
app; this module only wires them for HTTP.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from lungct import explain
from lungct.errors import EXTRA_OF_MODULE
from lungct.inference.service import InferenceService
from lungct.monitoring.predlog import PredictionLog
from lungct.serve.settings import ServeSettings

SUMMARY_METRICS = ("n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "data")
EXPLAIN_NEEDS = ("torch", "timm", "pytorch_grad_cam")  # Grad-CAM runs on the PyTorch model


def explain_unavailable() -> str | None:
    """Why /v1/explain cannot work in this install (the torch-free `lungct[serve]`), or None when it can."""
    missing = [m for m in EXPLAIN_NEEDS if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    extra = EXTRA_OF_MODULE[missing[0]]
    return (
        f"explanations need PyTorch and Grad-CAM, which this server's install lacks (missing: {', '.join(missing)}); "
        f"install the '{extra}' extra where it runs: pip install 'lungct[{extra}]'"
    )


def open_service(settings: ServeSettings) -> InferenceService:
    """Load the run (LungCTError when it is missing or broken) and open its prediction log (source "api").

    Explainers are made on first use (lungct.explain loads Grad-CAM then): each running explanation has its own
    model, at most explain_concurrency of them, which the app's ExplainGate also bounds.
    """
    run = settings.run
    unavailable = explain_unavailable()
    service = InferenceService(
        run,
        limits=settings.limits,
        backend=settings.backend,
        tta=settings.tta,
        hu_offset=settings.hu_offset,
        threads=settings.model_threads,
        source="api",
        keep_uploads=settings.keep_uploads,
        explainer_factory=None if unavailable else lambda: explain.Explainer(run, batch_size=1),
        render_overlay=lambda explanation, preprocess, max_side: explain.render_overlay(
            explanation, preprocess, max_side=max_side
        ),
        explain_max_side=settings.explain_max_side,
        explain_concurrency=settings.explain_concurrency,
        explain_unavailable=unavailable,
        precision=settings.precision,
        int8_max_drop=settings.int8_max_drop,
        batch_max_size=settings.batch_max_size if settings.batching else None,
        batch_wait_ms=settings.batch_wait_ms,
        batch_calls=settings.workers,  # model calls at once, batched or not
        model_batch_size=settings.model_batch_size,
        keep_feedback_images=settings.keep_feedback_images,
    )
    path = settings.resolved_log_path
    if path is not None:  # once the model has loaded: a run that fails to load leaves no log behind
        service.log = PredictionLog(path)
    return service


def read_metrics(run_dir: Path) -> tuple[dict | None, str]:
    """The run's headline test metrics (RUN/eval/metrics.json) or None with a one-line reason."""
    path = run_dir / "eval" / "metrics.json"
    if not path.is_file():
        return None, f"absent: {path.name} not found in RUN/eval (run lungct evaluate --run RUN --out RUN/eval)"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError) as exc:
        return None, f"unreadable: {exc}"
    summary = {k: metrics[k] for k in SUMMARY_METRICS if k in metrics}
    if isinstance(metrics.get("ci95"), dict):
        summary["ci95"] = metrics["ci95"]
    return summary, "present: RUN/eval/metrics.json"
