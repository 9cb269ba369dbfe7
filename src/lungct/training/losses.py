"""The training loss: cross-entropy, or softmax focal loss for hard, rare examples.

Focal loss (Lin et al., ICCV 2017) scales each sample's cross-entropy by (1 - p_target)^gamma, so slices the
model already gets right with confidence (most malignant and normal slices) weigh less and the hard ones
(benign slices that look normal) weigh more: an alternative to class weights for the imbalance lever.

Written here rather than taken from a library: torchvision.ops.sigmoid_focal_loss is the binary, sigmoid
form (the head here is a softmax over classes), timm has none, and MONAI's FocalLoss would bring a
framework in for a dozen lines. With gamma 0 it is exactly nn.CrossEntropyLoss (tested), class weights,
label smoothing, ignore_index and the weighted mean included, so the distributed loss normalisation in the
trainer holds for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lungct.distributed import IGNORE_INDEX


class FocalLoss(nn.Module):
    """Softmax focal loss with nn.CrossEntropyLoss's interface for class-index targets."""

    def __init__(
        self,
        gamma: float = 2.0,
        weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        ignore_index: int = IGNORE_INDEX,
    ):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")
        self.gamma, self.weight, self.label_smoothing = gamma, weight, label_smoothing
        self.reduction, self.ignore_index = reduction, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() != 1:
            raise ValueError("focal loss takes class-index targets; mixup/cutmix soft targets are not supported")
        ce = F.cross_entropy(
            logits,
            target,
            weight=self.weight,
            reduction="none",
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
        )
        kept = target != self.ignore_index
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.clamp(min=0)[:, None]).squeeze(1)
        loss = (1 - log_p.exp()).clamp(min=0).pow(self.gamma) * ce * kept
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        norm = kept.sum() if self.weight is None else self.weight[target[kept]].sum()
        return loss.sum() / norm


def make_loss(
    kind: str, gamma: float, weight: torch.Tensor | None, label_smoothing: float, reduction: str = "mean"
) -> nn.Module:
    """The configured loss (`train.loss`)."""
    if kind == "focal":
        return FocalLoss(gamma, weight, label_smoothing, reduction)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing, reduction=reduction)
