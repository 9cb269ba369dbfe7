"""Pretrained weights from a local file (safetensors or PyTorch) or the model hub, through timm's loader.

A safetensors file may carry metadata (arch, mean, std): the shared MobileNetV2 is TF-slim's, scaled
to [-1, 1], so its metadata, not timm's ImageNet defaults, decides normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lungct.errors import LungCTError

if TYPE_CHECKING:
    import torch


def read_weights_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise LungCTError(f"weights file {path} is not a readable safetensors file: {exc}") from exc


def _floats(text: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 3:
        raise ValueError(text)
    return values  # type: ignore[return-value]


def normalisation_from_metadata(meta: dict[str, str]) -> dict[str, tuple[float, float, float]]:
    out = {}
    for key in ("mean", "std"):
        if key in meta:
            try:
                out[key] = _floats(meta[key])
            except ValueError:
                raise LungCTError(f"weights metadata {key}={meta[key]!r} is not three numbers") from None
    return out


def check_weights_file(path: str | Path, timm_name: str) -> dict[str, str]:
    """Fail early, in one line, on a missing file or weights made for another architecture."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LungCTError(f"weights file not found: {path}")
    if path.suffix != ".safetensors" and not _looks_like_torch_file(path):
        raise LungCTError(f"weights file {path} is not a PyTorch (.pt, .pth, .bin) or .safetensors weights file")
    meta = read_weights_metadata(path)
    arch = meta.get("arch")
    if arch and arch != timm_name:
        raise LungCTError(f"weights file {path} is for {arch!r}, not {timm_name!r}")
    return meta


MIN_TENSORS_SET = 0.5  # share of the network's tensors a weights file must set, by name and shape


def check_weights_set(module: torch.nn.Module, path: str | Path, timm_name: str) -> None:
    """Refuse a file that leaves most of `module` at its random start.

    timm loads a file into a feature extractor (num_classes=0) without a strict key check, so the weights of
    another network would load as nothing, with one log line, and the run would still record the file as its
    pretrained source. Read with timm's own reader (the same unwrapping of state_dict/model and module. prefixes).
    """
    from timm.models import load_state_dict

    state = load_state_dict(str(path))
    own = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    matched = sum(1 for k, shape in own.items() if k in state and tuple(state[k].shape) == shape)
    if matched < MIN_TENSORS_SET * len(own):
        raise LungCTError(
            f"weights file {path} does not fit {timm_name}: it sets {matched} of the network's {len(own)} tensors "
            "(names and shapes must be timm's)"
        )


def _looks_like_torch_file(path: Path) -> bool:
    """What timm's loader reads from a file not named .safetensors: torch.save's zip, or a pickle (0x80...)."""
    with path.open("rb") as fh:
        head = fh.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"
