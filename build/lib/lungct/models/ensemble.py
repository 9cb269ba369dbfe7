"""Several classifiers answering as one: the average of their probabilities.

`lungct ensemble` turns the fold models of a `lungct cv` folder into one run directory, which every
command reads like a single run. The ensemble's output is log(mean_k softmax(member_k(x))): a softmax of it
gives exactly the mean probability, so prediction, calibration and the ONNX graph need no special case.

Members that share one frozen backbone (linear-probe folds) keep a single copy of it: the same answer at
one k-th of the cost.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lungct.config import HeadConfig
from lungct.models.classifier import CTClassifier


class EnsembleClassifier(nn.Module):
    """Members' mean probability. `backbones` holds one module (shared) or one per member."""

    def __init__(self, backbones: list[nn.Module], heads: list[nn.Module]):
        super().__init__()
        if len(backbones) not in (1, len(heads)):
            raise ValueError("an ensemble needs one shared backbone or one backbone per head")
        self.backbones = nn.ModuleList(backbones)
        self.heads = nn.ModuleList(heads)

    @property
    def shared_backbone(self) -> bool:
        return len(self.backbones) == 1 and len(self.heads) > 1

    def member_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(each member's logits, the members' mean pooled features)."""
        if self.shared_backbone:
            features = self.backbones[0](x)
            return [head(features) for head in self.heads], features
        logits, features = [], []
        for backbone, head in zip(self.backbones, self.heads, strict=True):
            f = backbone(x)
            features.append(f)
            logits.append(head(f))
        return logits, torch.stack(features).mean(0)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.member_outputs(x)
        log_probs = torch.stack([torch.log_softmax(z, dim=1) for z in logits])  # (k, B, classes)
        return torch.logsumexp(log_probs, dim=0) - math.log(len(logits)), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


def same_weights(modules: list[nn.Module]) -> bool:
    """Whether every module holds exactly the first one's parameters and buffers."""
    first = modules[0].state_dict()
    return all(
        other.keys() == first.keys() and all(torch.equal(first[k], other[k]) for k in first)
        for other in (m.state_dict() for m in modules[1:])
    )


def from_members(members: list[CTClassifier]) -> EnsembleClassifier:
    """An ensemble of trained classifiers; identical (frozen) backbones are kept once."""
    backbones = [m.backbone for m in members]
    if same_weights(backbones):
        backbones = backbones[:1]
    return EnsembleClassifier(backbones, [m.head for m in members])


def empty_ensemble(make_backbone, num_classes: int, head: HeadConfig, members: int, shared: bool):
    """The architecture of a saved ensemble, to load its weights into; `make_backbone()` builds one backbone."""
    backbones = [make_backbone() for _ in range(1 if shared else members)]
    width = getattr(backbones[0], "head_hidden_size", None) or backbones[0].num_features
    heads = [CTClassifier.make_head(width, num_classes, head) for _ in range(members)]
    return EnsembleClassifier(backbones, heads)
