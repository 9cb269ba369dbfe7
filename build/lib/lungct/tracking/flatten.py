"""Turn nested dicts (configs, metrics.json) into the flat key/value pairs MLflow stores.

MLflow keys allow letters, digits and `_ - . / space`; params are strings of bounded length; metrics are floats.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from lungct.contracts import flat_metrics

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
    """metrics.json of `lungct evaluate` as MLflow metrics (lungct.contracts.flat_metrics): per-class ones as
    `<class>.<metric>` (e.g. `malignant.recall`), ci95 intervals as `<name>_ci95_low/high`, plus the count `n`;
    the confusion matrix is left to the artifacts."""
    return metric_items({"n": metrics.get("n"), **flat_metrics(metrics, intervals=True)})
