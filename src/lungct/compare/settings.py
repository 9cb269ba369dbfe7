"""What a comparison is asked to do (`lungct compare`'s options), checked once where it is built."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungct.errors import LungCTError

# "mobilenetv2_100+probe": that backbone frozen, its head a logistic regression on the frozen features
# (lungct.training.probe), no fine-tuning: the baseline every fine-tuning recipe has to beat.
PROBE_SUFFIX = "+probe"


@dataclass
class CompareSettings:
    archs: list[str]
    out: Path
    weights: str | None = None  # pretrained weights for the config's own backbone only
    threads: int = 1  # torch threads for the latency measurement
    latency_budget_ms: float = 50.0  # per image, for the CPU-only recommendation
    accuracy_tolerance: float = 0.05  # "acceptable accuracy" for the mobile recommendation: this close to the best
    n_bootstrap: int = 1000
    progress: bool = True
    track: bool = False  # one nested MLflow run per backbone (the CLI opens the parent run)
    rows: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        from lungct.models.registry import get_spec

        self.out = Path(self.out)
        self.archs = list(dict.fromkeys(a.strip() for a in self.archs if a.strip()))
        if len(self.archs) < 2:
            raise LungCTError("--archs needs at least two backbones to compare, e.g. mobilenetv2_100,small_cnn")
        for arch in self.archs:
            get_spec(arch.removesuffix(PROBE_SUFFIX))
        if self.threads < 1:
            raise LungCTError(f"--threads must be at least 1, got {self.threads}")
        # checked here, not where they are used: a NaN or negative tolerance emptied the "acceptable" list (a
        # traceback after every backbone had trained), and 0 resamples wrote null intervals as if computed
        if not 0.0 <= self.accuracy_tolerance <= 1.0:
            raise LungCTError(f"--accuracy-tolerance must be between 0 and 1, got {self.accuracy_tolerance}")
        if not 0.0 < self.latency_budget_ms < math.inf:
            raise LungCTError(f"--latency-budget-ms must be a positive number, got {self.latency_budget_ms}")
        if self.n_bootstrap < 1:
            raise LungCTError(f"--bootstrap must be at least 1, got {self.n_bootstrap}")
