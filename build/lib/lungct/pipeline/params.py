"""params.yaml: the experiment settings DVC tracks, laid over an experiment YAML.

params.yaml has the config's own shape (`train.phase1.lr`, `model.input_size`, ...), so `dvc exp run -S
train.phase1.lr=3e-4` changes exactly that config field. Mappings merge key by key; lists and values replace.
Relative paths in params.yaml are relative to params.yaml, as those of a config are relative to the config.
Its `pipeline:` section (the stages' paths, read by dvc.yaml) is not part of the config and is left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lungct.config import ExperimentConfig, load_config, parse_config, read_yaml_mapping, resolve_paths

PIPELINE_KEY = "pipeline"


def merge_params(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overlay` laid over it, mapping by mapping."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_params(out[key], value)
        else:
            out[key] = value
    return out


def read_params(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "params")


def load_config_with_params(config: str | Path | None, params: str | Path | None) -> ExperimentConfig:
    """The experiment YAML (or the defaults) with params.yaml laid over it, validated as one config."""
    cfg = load_config(config)
    if params is None:
        return cfg
    overlay = {k: v for k, v in read_params(params).items() if k != PIPELINE_KEY}
    merged = merge_params(cfg.model_dump(mode="json"), overlay)
    # Paths from the config are absolute by now; only relative ones from params.yaml are left to resolve.
    return resolve_paths(parse_config(merged, origin=str(params)), Path(params).parent)
