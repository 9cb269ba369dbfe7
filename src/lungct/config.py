"""Experiment configuration: one YAML per experiment, validated by pydantic.

Every field has a default that trains on a 2-core CPU in minutes, so a config file only states what
differs. The resolved config is saved into each run directory so a run can be rebuilt exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lungct.errors import LungCTError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GroupsFile(_Strict):
    """A CSV beside a folder dataset that names the group (patient, source article) of each file."""

    csv: str
    path_column: str = "file"
    group_column: str = "group"


class SourceConfig(_Strict):
    """One dataset root: a class-per-folder tree (optionally pre-split) or a CSV manifest."""

    path: str
    include: list[str] | None = None  # labels (after aliases) to keep; None keeps all
    aliases: dict[str, str] = Field(default_factory=dict)  # folder name or label -> label
    groups: GroupsFile | None = None


class DataConfig(_Strict):
    sources: list[SourceConfig] = Field(default_factory=list)
    label_map: dict[str, str] = Field(default_factory=dict)  # applied after normalisation (e.g. binary tasks)
    color: Literal["grey", "rgb"] = "grey"  # grey: every image becomes one channel replicated to three
    # Hounsfield window for DICOM input (see lungct.dicom); stack3 = lung/mediastinal/bone as 3 channels
    dicom_window: Literal["lung", "mediastinal", "file", "stack3"] = "lung"
    positive_class: str | None = None  # for binary metrics and operating points
    max_images_per_class: int | None = None  # small subsets for tests and quick looks

    @model_validator(mode="after")
    def _stack3_is_rgb(self) -> DataConfig:
        if self.dicom_window == "stack3":  # three windows are three channels, so the model takes RGB input
            self.color = "rgb"
        return self


class SplitConfig(_Strict):
    mode: Literal["group", "random"] = "group"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Whole groups kept out of training and model selection, for `lungct calibrate` and `lungct threshold`.
    calib_fraction: float = 0.0
    # Look-alike grouping when no group column exists (see lungct.data.grouping).
    neighbour_similarity: float = 0.5
    duplicate_similarity: float = 0.92

    @field_validator("val_fraction", "test_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 < v < 0.5:
            raise ValueError("must be between 0 and 0.5")
        return v

    @field_validator("calib_fraction")
    @classmethod
    def _calib_fraction(cls, v: float) -> float:
        if not 0.0 <= v < 0.5:
            raise ValueError("must be at least 0 and below 0.5")
        return v


class HeadConfig(_Strict):
    dropout: float = 0.3
    hidden: list[int] = Field(default_factory=list)  # extra dense layers before the classifier


class ModelConfig(_Strict):
    arch: str = "mobilenetv2_100"
    weights: str | None = None  # local file, "hub" for the model hub, or None for random init
    head: HeadConfig = Field(default_factory=HeadConfig)
    input_size: int | None = None  # overrides the backbone's pretrained input size


class PhaseConfig(_Strict):
    epochs: int = 4
    lr: float = 1e-3


class FineTuneConfig(PhaseConfig):
    lr: float = 1e-4
    unfreeze: float = 0.3  # >= 1: number of top layers; < 1: fraction of the backbone's layers


class AugmentConfig(_Strict):
    rotation: float = 10.0  # degrees
    shift: float = 0.1  # fraction of width/height
    shear: float = 5.0  # degrees
    zoom: float = 0.1  # +- fraction
    hflip: bool = True


class EarlyStoppingConfig(_Strict):
    monitor: Literal["val_loss", "val_accuracy", "val_balanced_accuracy"] = "val_loss"
    patience: int = 3


class TrainConfig(_Strict):
    batch_size: int = 32
    optimizer: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    weight_decay: float = 1e-4
    step_size: int = 3  # StepLR period for sgd
    gamma: float = 0.1
    phase1: PhaseConfig = Field(default_factory=PhaseConfig)
    phase2: FineTuneConfig = Field(default_factory=FineTuneConfig)
    class_weights: bool = True
    freeze_batchnorm: bool = True
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    num_workers: int = 0
    threads: int | None = None  # torch intra-op threads; None leaves torch's default


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = 42
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping (configs, params.yaml); every problem is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise LungCTError(f"{what} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LungCTError(f"{what} {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict):
        raise LungCTError(f"{what} {path} must be a YAML mapping, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None) -> ExperimentConfig:
    """Read and validate an experiment YAML; None gives the defaults."""
    if path is None:
        return ExperimentConfig()
    path = Path(path)
    cfg = parse_config(read_yaml_mapping(path, "config"), origin=str(path))
    return resolve_paths(cfg, path.parent)


def resolve_paths(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Relative data and weights paths in a config file are relative to that file, not to the shell."""

    def resolve(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    for source in cfg.data.sources:
        source.path = resolve(source.path)
    if cfg.model.weights not in (None, "hub"):
        cfg.model.weights = resolve(cfg.model.weights)
    return cfg


def parse_config(raw: dict, origin: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise LungCTError(f"{origin}: {where}: {first['msg']}") from exc


def save_config(config: ExperimentConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
