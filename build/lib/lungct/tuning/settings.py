"""What a search is asked to do (`lungct tune`'s options), checked once where it is built."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lungct.errors import LungCTError

SAMPLERS = ("tpe", "random", "grid")
METRICS = ("val_balanced_accuracy", "val_accuracy", "val_loss")


@dataclass
class TuneSettings:
    trials: int
    study_dir: Path
    sampler: str = "tpe"
    metric: str = "val_balanced_accuracy"
    prune: bool = True
    keep: str = "all"  # "all" run directories, or only the "best"
    progress: bool = True
    track: bool = False  # log each trial as a nested MLflow run (the CLI opens the parent run)
    # an optuna pruner instead of the default (MedianPruner after two epochs; none with prune=False)
    pruner: Any = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise LungCTError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.metric not in METRICS:
            raise LungCTError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.keep not in ("all", "best"):
            raise LungCTError(f"--keep must be 'all' or 'best', not {self.keep!r}")
        if self.trials < 1:
            raise LungCTError(f"--trials must be at least 1, got {self.trials}")
        self.study_dir = Path(self.study_dir)
