"""Focal loss: cross-entropy at gamma 0, the (1 - p)^gamma scaling otherwise, and its place in a config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lungct.config import parse_config
from lungct.errors import LungCTError
from lungct.training.losses import FocalLoss, make_loss

LOGITS = torch.tensor([[4.0, 0.0, -1.0], [0.2, 0.1, 0.0], [-2.0, 3.0, 0.5], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0]])
TARGET = torch.tensor([0, 2, 1, 2, -100])  # the last one is distributed padding (ignore_index)
WEIGHT = torch.tensor([3.0, 1.0, 0.5])


@pytest.mark.parametrize("weight", [None, WEIGHT])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gamma_zero_is_exactly_cross_entropy(weight, smoothing, reduction):
    focal = FocalLoss(0.0, weight, smoothing, reduction)(LOGITS, TARGET)
    ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing, reduction=reduction)(LOGITS, TARGET)
    torch.testing.assert_close(focal, ce)


def test_each_sample_is_scaled_by_one_minus_its_target_probability_to_the_gamma():
    per_sample_ce = nn.CrossEntropyLoss(reduction="none")(LOGITS, TARGET)
    focal = FocalLoss(2.0, reduction="none")(LOGITS, TARGET)
    p = torch.softmax(LOGITS, 1)[torch.arange(4), TARGET[:4]]
    torch.testing.assert_close(focal[:4], (1 - p) ** 2 * per_sample_ce[:4])
    assert focal[4] == 0  # padding adds nothing
    # the confident, correct first sample is down-weighted far more than the uncertain second one
    assert focal[0] / per_sample_ce[0] < 0.001 < 0.4 < focal[1] / per_sample_ce[1]


def test_gradient_flows_and_prefers_the_hard_sample():
    logits = LOGITS[:2].clone().requires_grad_(True)
    FocalLoss(2.0)(logits, TARGET[:2]).backward()
    assert logits.grad[1].abs().sum() > 10 * logits.grad[0].abs().sum()


def test_make_loss_builds_the_configured_loss():
    assert isinstance(make_loss("focal", 2.0, None, 0.0), FocalLoss)
    assert isinstance(make_loss("cross_entropy", 2.0, None, 0.0), nn.CrossEntropyLoss)


def test_bad_settings_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(-1.0)
    with pytest.raises(ValueError, match="soft targets"):
        FocalLoss()(LOGITS, torch.softmax(LOGITS, 1))
    with pytest.raises(LungCTError, match="mixup or cutmix"):
        parse_config({"train": {"loss": "focal", "mixup": 0.2}})
    with pytest.raises(LungCTError, match="loss"):
        parse_config({"train": {"loss": "hinge"}})
