"""Experiment configuration: one YAML per experiment, validated by pydantic.

Every field has a default that trains on a 2-core CPU in minutes, so a config file only states what
differs. The resolved config is saved into each run directory so a run can be rebuilt exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lungct.contracts import DicomWindow
from lungct.errors import LungCTError

SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's seeds are 0 to 2**32 - 1; torch takes them too


def _check_seed(v: int | None) -> int | None:
    """A seed the split (scikit-learn) and training (numpy, torch) all accept, refused here rather than as their
    traceback after the data scan."""
    if v is not None and not 0 <= v <= SEED_MAX:
        raise ValueError(f"must be between 0 and {SEED_MAX}, got {v}")
    return v


class _Strict(BaseModel):
    # enum fields keep their plain string value, so configs compare, dump and print as before. YAML's .inf and .nan
    # are refused: a learning rate of .inf passed "gt=0" (one AdamW step at it makes the weights inf and NaN), and an
    # unfreeze of .nan passed both of its range checks.
    model_config = ConfigDict(extra="forbid", use_enum_values=True, allow_inf_nan=False)


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
    dicom_window: DicomWindow = DicomWindow.lung
    # 16-bit, 32-bit or float PNG/TIFF files that store Hounsfield units plus this offset (1024 and 32768 are
    # common exports) get the DICOM window too; None stretches such files from their darkest to brightest pixel.
    # 8-bit files are display images already and are read as they are.
    hu_offset: int | None = Field(None, ge=-65536, le=65536)
    # full: the whole slice; body: each slice cropped to the body's square field of view (lungct.data.field)
    field: Literal["full", "body"] = "full"
    positive_class: str | None = None  # for binary metrics and operating points
    max_images_per_class: int | None = Field(None, ge=1)  # small subsets for tests and quick looks
    # the scan of every image (lungct.data.scan): worker processes (None: the cores, at most 8) and its cache
    # of unchanged files under $LUNGCT_CACHE_DIR (default ~/.cache/lungct)
    scan_workers: int | None = Field(None, ge=1)
    scan_cache: bool = True

    @model_validator(mode="after")
    def _windows(self) -> DataConfig:
        if self.dicom_window == "stack3":  # three windows are three channels, so the model takes RGB input
            self.color = "rgb"
        if self.hu_offset is not None and self.dicom_window == "file":
            raise ValueError(
                "hu_offset needs a preset window (lung, mediastinal or stack3): an image file has no window of its own"
            )
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
    dropout: float = Field(0.3, ge=0, lt=1)
    hidden: list[int] = Field(default_factory=list)  # extra dense layers before the classifier

    @field_validator("hidden")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if any(width < 1 for width in v):
            raise ValueError("every hidden layer needs at least one unit")
        return v


class TilesConfig(_Strict):
    """Tile pooling (lungct.models.tiles): the backbone sees overlapping `size` px tiles every `stride` px of the
    `input_size` slice, and the tiles' pooled features are pooled again across tiles (max: a lesion in one tile
    counts fully; mean). Multiples of the backbone's stride (32) keep Grad-CAM's stitched map aligned."""

    size: int = Field(224, ge=32, le=2048)
    stride: int = Field(144, ge=8, le=2048)
    pool: Literal["max", "mean"] = "max"

    @model_validator(mode="after")
    def _stride_within_tile(self) -> TilesConfig:
        if self.stride > self.size:
            raise ValueError(f"stride {self.stride} is larger than the tile ({self.size} px): slices would have gaps")
        return self


class ModelConfig(_Strict):
    arch: str = "mobilenetv2_100"
    weights: str | None = None  # local file, "hub" for the model hub, or None for random init
    head: HeadConfig = Field(default_factory=HeadConfig)
    input_size: int | None = Field(None, ge=32, le=2048)  # overrides the backbone's pretrained input size
    pool: Literal["avg", "max", "avgmax", "catavgmax"] = "avg"  # timm's global pooling of the last feature map
    tiles: TilesConfig | None = None  # None: the whole slice in one pass
    # Share of the resized slice the centre crop keeps (timm's crop_pct; None: the backbone's own, 0.875 for
    # MobileNetV2). 1.0 keeps all of a square slice: ImageNet's crop trims the lung periphery (docs/model-quality.md).
    crop_pct: float | None = Field(None, gt=0.5, le=1.0)
    # The resize filter (None: the backbone's own, bicubic for MobileNetV2); prediction and serving follow model.json.
    interpolation: Literal["bilinear", "bicubic"] | None = None

    @model_validator(mode="after")
    def _tiles_fit(self) -> ModelConfig:
        if self.tiles is not None:
            if self.input_size is None:
                raise ValueError("model.tiles needs model.input_size (the slice size the tiles are cut from)")
            if self.tiles.size > self.input_size:
                raise ValueError(f"tiles.size {self.tiles.size} is larger than input_size {self.input_size}")
        return self


class PhaseConfig(_Strict):
    epochs: int = Field(4, ge=0)
    lr: float = Field(1e-3, gt=0)


class HeadPhaseConfig(PhaseConfig):
    # gradient: `epochs` of the optimiser on the head; logistic: one pass of frozen features and a
    # logistic regression (lungct.training.probe), C from group CV inside the training part unless given
    solver: Literal["gradient", "logistic"] = "gradient"
    c: float | None = Field(None, gt=0)


class FineTuneConfig(PhaseConfig):
    lr: float = Field(1e-4, gt=0)
    # An integer counts top parameter layers (10: the top ten); a decimal is a fraction of them (0.3; 1.0: all);
    # "all" is the whole backbone. The type decides, so 1 (one layer) and 1.0 (every layer) cannot be confused.
    unfreeze: int | float | Literal["all"] = Field(0.3)

    @field_validator("unfreeze", mode="before")
    @classmethod
    def _unfreeze_amount(cls, v: object) -> int | float:
        if v == "all":
            return 1.0
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError(f"unfreeze {v!r}: give a layer count (an integer >= 0), a fraction (0.0 to 1.0) or 'all'")
        if isinstance(v, float) and v > 1:
            hint = f" (for a count of {int(v)} layers write {int(v)})" if v.is_integer() else ""
            raise ValueError(f"unfreeze {v} is a fraction above 1.0; a fraction of the layers is 0.0 to 1.0{hint}")
        return v


class AugmentConfig(_Strict):
    rotation: float = Field(10.0, ge=0, le=180)  # degrees
    shift: float = Field(0.1, ge=0, le=1)  # fraction of width/height
    shear: float = Field(5.0, ge=0, lt=90)  # degrees
    zoom: float = Field(0.1, ge=0, lt=1)  # +- fraction
    hflip: bool = True
    # affine: the settings above; trivialaugment / randaugment: torchvision's automatic policies (plus hflip)
    policy: Literal["affine", "trivialaugment", "randaugment"] = "affine"


class EarlyStoppingConfig(_Strict):
    monitor: Literal["val_loss", "val_accuracy", "val_balanced_accuracy"] = "val_loss"
    patience: int = Field(3, ge=1)


class TrainConfig(_Strict):
    # Initialisation, data order, augmentation and the probe's inner folds; None: the experiment's `seed`, which
    # also draws the split. Another train.seed on the same split trains another member of a seed ensemble.
    seed: int | None = None
    batch_size: int = Field(32, ge=1, le=4096)
    optimizer: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    step_size: int = Field(3, ge=1)  # StepLR period for sgd
    gamma: float = Field(0.1, gt=0, le=1)
    # Learning-rate schedule within each phase: constant (StepLR for sgd), or linear warmup then cosine decay.
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = Field(0, ge=0)
    layer_decay: float | None = Field(None, gt=0, le=1)  # fine-tuning: lr x decay^(depth from the top) per block
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    # cross_entropy, or focal: cross-entropy x (1 - p_target)^focal_gamma (lungct.training.losses)
    loss: Literal["cross_entropy", "focal"] = "cross_entropy"
    focal_gamma: float = Field(2.0, ge=0, le=10)
    sampler: Literal["shuffle", "balanced"] = "shuffle"  # balanced: each class drawn equally often (with replacement)
    mixup: float = Field(0.0, ge=0)  # timm Mixup alpha (0: off)
    cutmix: float = Field(0.0, ge=0)  # timm CutMix alpha (0: off)
    ema: float | None = Field(None, gt=0, lt=1)  # decay of an exponential moving average of the weights (timm)
    phase1: HeadPhaseConfig = Field(default_factory=HeadPhaseConfig)
    phase2: FineTuneConfig = Field(default_factory=FineTuneConfig)
    class_weights: bool = True
    freeze_batchnorm: bool = True
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    # DataLoader: worker processes (0 decodes in the training process: the 2-core default, where workers only
    # compete with the model for the cores), pinned memory (None: on when training on a GPU) and batches
    # prefetched per worker (None: PyTorch's 2)
    num_workers: int = Field(0, ge=0)
    # keep each decoded, resized image in memory after its first epoch (about 64 KB at 256 px grey): faster
    # epochs on small data sets; off for data sets that do not fit (100k slices: about 6 GB per process)
    cache_images: bool = True
    pin_memory: bool | None = None
    prefetch_factor: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None leaves torch's default
    # GPU only (a CPU run stays fp32 and contiguous): autocast precision, and channels-last memory layout
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int | None) -> int | None:
        return _check_seed(v)

    @model_validator(mode="after")
    def _something_trains(self) -> TrainConfig:
        if self.phase1.solver == "gradient" and self.phase1.epochs + self.phase2.epochs == 0:
            raise ValueError("phase1.epochs + phase2.epochs is 0: nothing would train")
        if self.loss == "focal" and (self.mixup > 0 or self.cutmix > 0):
            raise ValueError("loss: focal takes class-index targets; it cannot be combined with mixup or cutmix")
        return self


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = 42
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int | None) -> int | None:
        return _check_seed(v)


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that must hold a mapping (configs, params.yaml); every problem is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise LungCTError(f"{what} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
