"""A linear probe: the head fitted by logistic regression on frozen backbone features, in one pass.

On a small data set, scikit-learn's L-BFGS logistic regression on frozen features matches or beats a few
epochs of SGD on the head, costs one forward pass per image instead of one per epoch, and has one knob
(the inverse regularisation C), chosen here by group cross-validation inside the training part only.
The solution is written into the run's ordinary dense head (the standardisation folded into its weights),
so the run predicts, exports and explains like any other; fine-tuning may start from it (LP-FT).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader

from lungct.errors import LungCTError

log = logging.getLogger("lungct")

C_GRID = (0.003, 0.01, 0.03, 0.1)  # inverse L2 strength on standardised features; wide enough for 1-2k features
INNER_FOLDS = 3
FALLBACK_C = 0.01  # when the training part has too few groups per class for the inner search


@dataclass
class ProbeFit:
    c: float
    inner_scores: dict[float, float]  # C -> mean inner-fold balanced accuracy
    train_loss: float
    train_accuracy: float


@torch.inference_mode()
def frozen_features(backbone: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, 2, d) of each image and its horizontal mirror, labels (n,)): the mirror is the one
    augmentation that keeps a slice anatomically plausible, so it doubles the samples for free."""
    backbone.eval()
    device = next(backbone.parameters()).device
    feats, labels = [], []
    for x, y in loader:
        x = x.to(device)
        f = torch.stack([backbone(x), backbone(torch.flip(x, dims=[3]))], dim=1)
        feats.append(f.float().cpu().numpy())
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def _fit(x: np.ndarray, y: np.ndarray, c: float, balanced: bool) -> tuple[StandardScaler, LogisticRegression]:
    n, views, d = x.shape
    flat = x.reshape(n * views, d)
    scaler = StandardScaler().fit(flat)
    lr = LogisticRegression(C=c, class_weight="balanced" if balanced else None, max_iter=3000)
    lr.fit(scaler.transform(flat), np.repeat(y, views))
    return scaler, lr


def _proba(scaler: StandardScaler, lr: LogisticRegression, x: np.ndarray) -> np.ndarray:
    n, views, d = x.shape
    return lr.predict_proba(scaler.transform(x.reshape(n * views, d))).reshape(n, views, -1).mean(1)


def choose_c(x: np.ndarray, y: np.ndarray, groups: list[str], balanced: bool, seed: int) -> dict[float, float]:
    """Mean balanced accuracy of each C over group folds of the training part (empty when too few groups)."""
    groups_arr = np.asarray(groups)
    per_class = min(len(set(groups_arr[y == k])) for k in np.unique(y))
    if per_class < INNER_FOLDS:
        return {}
    splitter = StratifiedGroupKFold(INNER_FOLDS, shuffle=True, random_state=seed)
    splits = list(splitter.split(x[:, 0], y, groups_arr))
    scores = {}
    for c in C_GRID:
        fold_scores = []
        for tr, va in splits:
            scaler, lr = _fit(x[tr], y[tr], c, balanced)
            fold_scores.append(balanced_accuracy_score(y[va], _proba(scaler, lr, x[va]).argmax(1)))
        scores[c] = float(np.mean(fold_scores))
    return scores


def best_c(scores: dict[float, float]) -> float:
    """The C of the best inner-fold score (the stronger regularisation on a tie); FALLBACK_C without a search."""
    return max(scores, key=lambda k: (scores[k], -k)) if scores else FALLBACK_C


def write_head(head: nn.Sequential, scaler: StandardScaler, lr: LogisticRegression, num_classes: int) -> None:
    """Fold (x - mean) / scale and the regression's coefficients into the head's last dense layer."""
    linear = head[-1]
    if len(head) != 2 or not isinstance(linear, nn.Linear):
        raise LungCTError("a linear probe needs a head without hidden layers (model.head.hidden: [])")
    coef, intercept = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # binary: sklearn gives one logit z; softmax([-z/2, z/2]) = sigmoid(z)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    present = lr.classes_
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.full(num_classes, -30.0)  # classes absent from training get (practically) zero probability
    scale = scaler.scale_
    weight[present] = coef / scale
    bias[present] = intercept - (coef * scaler.mean_ / scale).sum(1)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))


def fit_probe(
    backbone: nn.Module,
    head: nn.Sequential,
    loader: DataLoader,
    groups: list[str],
    num_classes: int,
    balanced: bool,
    seed: int,
    c: float | None = None,
) -> ProbeFit:
    """Fit the head on frozen features of `loader` (no augmentation); C from inner group CV unless given."""
    x, y = frozen_features(backbone, loader)
    scores = {} if c is not None else choose_c(x, y, groups, balanced, seed)
    if c is None:
        c = best_c(scores)
        if not scores:
            log.warning("too few groups per class for an inner C search; linear probe uses C = %g", c)
    scaler, lr = _fit(x, y, c, balanced)
    write_head(head, scaler, lr, num_classes)
    p = np.clip(_proba(scaler, lr, x), 1e-12, 1)
    loss = float(-np.log(p[np.arange(len(y)), np.searchsorted(lr.classes_, y)]).mean())
    acc = float((lr.classes_[p.argmax(1)] == y).mean())
    log.info("linear probe: C %g (inner group-CV balanced accuracy %s)", c, {k: round(v, 3) for k, v in scores.items()})
    return ProbeFit(c, scores, loss, acc)
