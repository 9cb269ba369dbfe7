"""`lungct compare --archs mobilenetv2_100+probe,...`: the linear-probe baseline as a backbone option."""

from __future__ import annotations

import pytest

from lungct.compare.core import arch_config
from lungct.compare.settings import CompareSettings
from lungct.errors import LungCTError
from tests.conftest import tiny_config


def test_probe_option_freezes_the_backbone_and_fits_the_head_by_regression(tiny_dataset, fake_pretrained, tmp_path):
    cfg = tiny_config(tiny_dataset, fake_pretrained)
    probe = arch_config(cfg, "mobilenetv2_100+probe")
    assert probe.model.arch == "mobilenetv2_100" and probe.model.weights == str(fake_pretrained)
    assert probe.train.phase1.solver == "logistic" and probe.train.phase2.epochs == 0
    assert probe.name.endswith("mobilenetv2_100+probe")
    plain = arch_config(cfg, "mobilenetv2_100")
    assert plain.train.phase1.solver == "gradient" and plain.train.phase2.epochs == 2
    settings = CompareSettings(["mobilenetv2_100+probe", "mobilenetv2_100"], tmp_path)
    assert settings.archs == ["mobilenetv2_100+probe", "mobilenetv2_100"]
    with pytest.raises(LungCTError, match="unknown backbone"):
        CompareSettings(["nosuchnet+probe", "mobilenetv2_100"], tmp_path)
