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
    """A study row is only comparable when it draws the default's folds: same data, split and split seed.

    The repeated group k-fold rows (`<recipe>_folds<N>_224`, benchmarks/model_quality/repeated_kfold.py) draw other
    folds on purpose: each must be its recipe's row with only the experiment seed changed, and the training seed
    held at the default's, so that the spread between draws is the patients'."""
    default = load_config(CONFIGS / "iqothnccd.yaml")
    for path in sorted((CONFIGS / "model_quality").glob("*.yaml")):
        cfg = load_config(path)
        recipe, sep, draw = path.stem.partition("_folds")
        if sep:
            base = load_config(CONFIGS / "model_quality" / f"{recipe}_{draw.split('_', 1)[1]}.yaml")
            assert cfg.seed != default.seed and cfg.train.seed == default.seed, path.name
            drawn = cfg.model_dump(exclude={"name", "seed", "train"})
            assert drawn == base.model_dump(exclude={"name", "seed", "train"}), path.name
            assert cfg.train.model_dump(exclude={"seed"}) == base.train.model_dump(exclude={"seed"}), path.name
            continue
        assert cfg.seed == default.seed, path.name
        assert cfg.split == default.split, path.name
        assert [s.path for s in cfg.data.sources] == [s.path for s in default.data.sources], path.name
