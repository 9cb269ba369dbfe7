"""Turn nested dicts (configs, metrics.json) into the flat key/value pairs MLflow stores.

MLflow keys allow letters, digits and `_ - . / space`; params are strings of bounded length; metrics are floats.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

MAX_KEY = 250
MAX_PARAM_VALUE = 6000
_BAD_KEY_CHARS = re.compile(r"[^\w\-./ ]")


def clean_key(key: str) -> str:
    """A key MLflow accepts: other characters become `_`, long keys are cut."""
    return _BAD_KEY_CHARS.sub("_", str(key))[:MAX_KEY]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"phase1": {"lr": 1e-3}}} -> {"train.phase1.lr": 1e-3}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def param_items(params: Mapping[str, Any]) -> dict[str, str]:
    """Flattened params as MLflow strings (None becomes "None", lists their repr)."""
    return {clean_key(k): str(v)[:MAX_PARAM_VALUE] for k, v in flatten(params).items()}


def metric_items(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flattened numeric metrics; strings, None, booleans, lists and infinities are skipped."""
    out = {}
    for key, value in flatten(metrics).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        value = float(value)
        if math.isinf(value):
            continue
        out[clean_key(key)] = value
    return out


def report_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """metrics.json of `lungct evaluate` as MLflow metrics, its ci95 intervals as `<name>_ci95_low/high`.

    Per-class metrics become `<class>.<metric>` (e.g. `malignant.recall`); the confusion matrix is left to the
    artifacts.
    """
    flat = {k: v for k, v in metrics.items() if k not in ("ci95", "confusion_matrix", "skipped", "data")}
    out = metric_items(flat)
    for name, interval in (metrics.get("ci95") or {}).items():
        if isinstance(interval, list | tuple) and len(interval) == 2:
            out.update(metric_items({f"{name}_ci95_low": interval[0], f"{name}_ci95_high": interval[1]}))
    return out
