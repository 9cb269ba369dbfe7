"""Pretrained weights from a local file (safetensors or PyTorch) or the model hub, through timm's loader.

A safetensors file may carry metadata (arch, mean, std): the shared MobileNetV2 is TF-slim's, scaled
to [-1, 1], so its metadata, not timm's ImageNet defaults, decides normalisation.
"""

from __future__ import annotations

from pathlib import Path

from lungct.errors import LungCTError


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
    meta = read_weights_metadata(path)
    arch = meta.get("arch")
    if arch and arch != timm_name:
        raise LungCTError(f"weights file {path} is for {arch!r}, not {timm_name!r}")
    return meta
