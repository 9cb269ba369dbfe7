"""A run is a directory: config, split, weights, history, plots and metrics, readable by every command.

config.yaml        resolved experiment config
model.json         what rebuilds the model: arch, classes, preprocessing, head, weights origin
model.safetensors  best weights (by the early-stopping monitor)
checkpoint_last.pt last epoch's full state, for resuming an interrupted run
split.csv          path,label,group,part
history.csv        one row per epoch; curves.png plots it
summary.json       counts, skipped files, timings, status
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lungct.config import HeadConfig, TilesConfig
from lungct.contracts import RunSummary
from lungct.data.preprocess import Preprocess
from lungct.errors import LungCTError, one_line
from lungct.files import atomic_write

if TYPE_CHECKING:  # reading a run (cards, versions, summaries) needs no torch: the torch-free server does it
    import torch

# model.json's format. 1: before the field existed; 2: adds schema_version and versions. A card newer than this
# lungct is refused with a clear message instead of being half-read.
CARD_SCHEMA_VERSION = 2
VERSIONED_LIBRARIES = ("lungct", "torch", "timm", "torchvision", "numpy", "onnx", "onnxruntime")


def library_versions() -> dict[str, str]:
    """The versions of Python and of the libraries that shape a model, as MONAI bundles record them."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in VERSIONED_LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


@dataclass
class ModelCard:
    """model.json: what rebuilds and describes a trained model."""

    arch: str
    timm_name: str
    classes: list[str]
    preprocess: Preprocess
    head: HeadConfig = field(default_factory=HeadConfig)
    pretrained: bool = False
    weights_source: str = ""
    positive_class: str | None = None
    global_pool: str = "avg"  # timm's pooling of the last feature map (model.pool)
    tiles: dict | None = None  # model.tiles (size, stride, pool) when the backbone runs on tiles of the slice
    members: int = 0  # > 0: an ensemble of this many classifiers (lungct ensemble)
    shared_backbone: bool = False  # an ensemble whose members share one frozen backbone
    versions: dict[str, str] = field(default_factory=library_versions)  # of the software that made the model
    schema_version: int = CARD_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "arch": self.arch,
            "timm_name": self.timm_name,
            "classes": self.classes,
            "preprocess": self.preprocess.to_dict(),
            "head": self.head.model_dump(),
            "pretrained": self.pretrained,
            "weights_source": self.weights_source,
            "positive_class": self.positive_class,
            "global_pool": self.global_pool,
            "tiles": self.tiles,
            "members": self.members,
            "shared_backbone": self.shared_backbone,
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        schema = int(d.get("schema_version", 1))
        if schema > CARD_SCHEMA_VERSION:
            raise LungCTError(
                f"model.json has schema version {schema}, newer than this lungct reads ({CARD_SCHEMA_VERSION}): "
                "upgrade lungct to use this run"
            )
        return cls(
            d["arch"],
            d["timm_name"],
            list(d["classes"]),
            Preprocess.from_dict(d["preprocess"]),
            HeadConfig(**d.get("head", {})),
            bool(d.get("pretrained")),
            d.get("weights_source", ""),
            d.get("positive_class"),
            d.get("global_pool", "avg"),
            dict(d["tiles"]) if d.get("tiles") else None,
            int(d.get("members", 0)),
            bool(d.get("shared_backbone", False)),
            dict(d.get("versions") or {}),
            schema,
        )


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    model_json = property(lambda self: self.path / "model.json")
    weights = property(lambda self: self.path / "model.safetensors")
    checkpoint = property(lambda self: self.path / "checkpoint_last.pt")
    split = property(lambda self: self.path / "split.csv")
    history = property(lambda self: self.path / "history.csv")
    curves = property(lambda self: self.path / "curves.png")
    summary = property(lambda self: self.path / "summary.json")

    def require_model(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise LungCTError(f"{self.path} is a file, not a run directory")
        if not self.path.is_dir():
            raise LungCTError(f"run directory not found: {self.path}")
        for f in (self.model_json, self.weights):
            if not f.is_file():
                raise LungCTError(f"{self.path} is not a finished run: {f.name} is missing")

    def ensemble_source(self) -> str | None:
        """The cv folder a fold ensemble was built from (`lungct ensemble`, summary.json), or None for other runs."""
        return (getattr(self.read_summary(), "ensemble", None) or {}).get("cv")

    def card(self) -> ModelCard:
        """model.json as a ModelCard; a LungCTError naming the file when it is not one (bad JSON, types, keys)."""
        self.require_model()
        try:
            data = json.loads(self.model_json.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            return ModelCard.from_dict(data)
        except KeyError as exc:
            raise LungCTError(f"{self.model_json} is damaged: it has no {exc.args[0]!r}") from exc
        except (ValueError, TypeError, AttributeError) as exc:  # ValueError: bad JSON, bad UTF-8, wrong types
            raise LungCTError(f"{self.model_json} is damaged: {one_line(exc)}") from exc

    def read_summary(self) -> RunSummary:
        """summary.json as its typed record; a run without one has status None."""
        if not self.summary.is_file():
            return RunSummary()
        try:
            return RunSummary.model_validate_json(self.summary.read_bytes())
        except ValueError as exc:
            raise LungCTError(f"{self.summary} is damaged: {one_line(exc)}") from None


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, inode: int, size: int, mtime_ns: int):
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256")


def weights_digest(weights: Path):
    """A sha256 of the weights file, read once per version of it (a new file is another inode, size or mtime):
    the model version and the familiarity reference's check both need it at start-up, and an ensemble's file is
    the size of all its members. A copy, for the caller to extend or finish."""
    stat = weights.stat()
    return _file_digest(str(weights.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns).copy()


def model_version(run: RunDir) -> str:
    """Names exactly what answers a request: run name, backbone, and a hash of weights plus calibration.

    Two servers with the same version give the same probabilities; retraining or recalibrating changes it.
    """
    card = run.card()
    digest = weights_digest(run.weights)
    calibration = run.path / "calibration.json"
    if calibration.is_file():
        digest.update(calibration.read_bytes())
    return f"{run.path.resolve().name}-{card.arch}-{digest.hexdigest()[:12]}"


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2).encode())


def save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save

    atomic_write(path, save({k: v.detach().contiguous() for k, v in model.state_dict().items()}))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a safetensors file into `model`; a LungCTError naming the file when it is damaged or truncated."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except SafetensorError as exc:
        raise LungCTError(
            f"{path} is damaged or truncated and cannot be read ({one_line(exc, 120)}); "
            "restore it from a backup or train the run again"
        ) from None
    model.load_state_dict(state)


def load_model(run: RunDir) -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the trained classifier from model.json (no pretrained download) and load its weights."""
    from lungct.models.classifier import CTClassifier, create_backbone
    from lungct.models.ensemble import empty_ensemble

    card = run.card()

    def make_backbone() -> torch.nn.Module:
        pre = card.preprocess
        tiles = TilesConfig(**card.tiles) if card.tiles else None
        return create_backbone(card.arch, None, 0, pre.color, pre.input_size, card.global_pool, tiles).module

    if card.members:
        model = empty_ensemble(make_backbone, len(card.classes), card.head, card.members, card.shared_backbone)
    else:
        model = CTClassifier(make_backbone(), len(card.classes), card.head)
    try:
        load_weights(model, run.weights)
    except (RuntimeError, OSError) as exc:
        reason = one_line(exc)  # torch's message spans lines: the CLI prints one
        raise LungCTError(f"{run.weights} does not match {run.model_json}: {reason}") from exc
    return model.eval(), card
