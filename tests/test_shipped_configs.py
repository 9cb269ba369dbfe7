"""Every experiment YAML the project ships must load: a typo in a key or a value of a study row would otherwise
surface only when someone spends an hour of CPU on `run_cv.sh` and the row fails at its first fold."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungct.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))


def test_the_project_ships_configs():
    assert len(SHIPPED) >= 6, SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_config_loads_and_its_name_is_its_file(path: Path):
    cfg = load_config(path)
    # runs/model_quality/NAME and the config's `name` must agree, or table.py mislabels rows
    assert cfg.name == path.stem


def test_model_quality_rows_share_the_defaults_folds():
    """A study row is only comparable when it draws the default's folds: same data, split and split seed."""
    default = load_config(CONFIGS / "iqothnccd.yaml")
    for path in sorted((CONFIGS / "model_quality").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.seed == default.seed, path.name
        assert cfg.split == default.split, path.name
        assert [s.path for s in cfg.data.sources] == [s.path for s in default.data.sources], path.name
