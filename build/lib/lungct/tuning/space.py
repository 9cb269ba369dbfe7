"""What `lungct tune` searches: learning rates, dropout, unfreeze depth, augmentation strength, class weights.

Each knob names one Optuna parameter and how it changes an experiment config, so a trial's parameters and
the best config YAML can never disagree. Knobs that only matter for transfer learning (the fine-tuning phase)
are left out for backbones trained from scratch, which train in one phase at phase1's rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from lungct.config import ExperimentConfig


def _set_phase1_lr(cfg: ExperimentConfig, v: Any) -> None:
    cfg.train.phase1.lr = float(v)


def _set_phase2_lr(cfg: ExperimentConfig, v: Any) -> None:
    cfg.train.phase2.lr = float(v)


def _set_dropout(cfg: ExperimentConfig, v: Any) -> None:
    cfg.model.head.dropout = float(v)


def _set_unfreeze(cfg: ExperimentConfig, v: Any) -> None:
    cfg.train.phase2.unfreeze = float(v)


def _set_class_weights(cfg: ExperimentConfig, v: Any) -> None:
    cfg.train.class_weights = bool(v)


def _set_augment_strength(cfg: ExperimentConfig, v: Any) -> None:
    """Scale the config's geometric augmentation (0 = none, 1 = as configured, 2 = twice as strong)."""
    a, s = cfg.train.augment, float(v)
    a.rotation = round(a.rotation * s, 3)
    a.shift = round(min(a.shift * s, 0.3), 4)
    a.shear = round(a.shear * s, 3)
    a.zoom = round(min(a.zoom * s, 0.5), 4)


@dataclass(frozen=True)
class Knob:
    name: str
    apply: Callable[[ExperimentConfig, Any], None]
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    choices: tuple[Any, ...] = ()  # categorical when set
    grid: tuple[Any, ...] = ()  # values for the grid sampler; empty: the config's value is kept
    transfer_only: bool = False  # only for pretrained backbones (the fine-tuning phase)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


KNOBS: tuple[Knob, ...] = (
    Knob("phase1_lr", _set_phase1_lr, 1e-4, 3e-3, log=True, grid=(3e-4, 1e-3)),
    Knob("phase2_lr", _set_phase2_lr, 1e-5, 1e-3, log=True, transfer_only=True),
    Knob("dropout", _set_dropout, 0.0, 0.6, grid=(0.2, 0.5)),
    Knob("unfreeze", _set_unfreeze, 0.1, 0.6, transfer_only=True),
    Knob("augment_strength", _set_augment_strength, 0.0, 2.0, grid=(0.0, 1.0)),
    Knob("class_weights", _set_class_weights, choices=(True, False)),
)


def is_transfer(cfg: ExperimentConfig) -> bool:
    """Pretrained weights are configured, so training has a head phase and a fine-tuning phase."""
    return cfg.model.weights is not None


def active_knobs(cfg: ExperimentConfig, sampler: str) -> list[Knob]:
    transfer = is_transfer(cfg)
    knobs = [k for k in KNOBS if transfer or not k.transfer_only]
    return [k for k in knobs if k.grid] if sampler == "grid" else knobs


def grid_space(cfg: ExperimentConfig) -> dict[str, list[Any]]:
    """The small grid: 2 x 2 x 2 = 8 points (head learning rate, dropout, augmentation off or as configured)."""
    return {k.name: list(k.grid) for k in active_knobs(cfg, "grid")}


def suggest(trial: optuna.Trial, knobs: list[Knob]) -> dict[str, Any]:
    return {k.name: k.suggest(trial) for k in knobs}


def apply_params(cfg: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """A copy of `cfg` with a trial's parameters applied (unknown names are an error, not silently dropped)."""
    by_name = {k.name: k for k in KNOBS}
    out = cfg.model_copy(deep=True)
    for name, value in params.items():
        by_name[name].apply(out, value)
    return out
