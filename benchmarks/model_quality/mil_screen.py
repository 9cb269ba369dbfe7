"""Attention-based multiple-instance learning over a study's slices, screened on cached frozen features.

A study (look-alike group, the patient proxy) is a bag of slices carrying the case label; a benign case's
slices without a visible nodule look normal, which is exactly the setting MIL is for. Gated attention pooling
(Ilse, Tomczak & Welling, ICML 2018) learns which slices of a bag to weigh, instead of the plain mean of
slice probabilities that the study-level columns of every other row use.

Usage: python benchmarks/model_quality/mil_screen.py [full-224-avg]  -> runs/screen/mil_<features>.csv
(features from `extract.py`; same 5 group folds and pool as screen.py). Per fold: the bags of the fold's
development groups train the model (5 seeds, averaged; fixed settings chosen before looking at any fold),
the fold's test groups are scored. One decision per study: the slice-level columns give each slice its
study's probabilities, which is what a clinician reading the study would be shown.

Written here rather than taken from a library: MONAI's MILModel wraps a torchvision ResNet over image tiles
and cannot take cached feature vectors; the pooling itself is a dozen lines of torch.
"""

from __future__ import annotations

import csv
import sys
import time

import numpy as np
import torch
from screen import SCREEN, fold_metrics, load
from torch import nn

SEEDS = 5
EPOCHS = 60
HIDDEN, ATTENTION = 64, 32


class GatedAttentionMIL(nn.Module):
    """Instance embedding, gated attention weights over the bag's instances, one linear classifier per bag."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, HIDDEN), nn.ReLU(), nn.Dropout(0.25))
        self.value = nn.Linear(HIDDEN, ATTENTION)
        self.gate = nn.Linear(HIDDEN, ATTENTION)
        self.score = nn.Linear(ATTENTION, 1)
        self.classify = nn.Linear(HIDDEN, classes)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(bag)  # (instances, HIDDEN)
        a = torch.softmax(self.score(torch.tanh(self.value(h)) * torch.sigmoid(self.gate(h))).squeeze(-1), 0)
        return self.classify(a @ h), a


def bags(groups: np.ndarray, idx: np.ndarray) -> list[np.ndarray]:
    """The instance indices of each group among `idx`, in a fixed order."""
    return [idx[groups[idx] == g] for g in np.unique(groups[idx])]


def train(x: np.ndarray, y: np.ndarray, train_bags: list[np.ndarray], classes: int, seed: int) -> GatedAttentionMIL:
    """x: (n, 2 flips, d) standardised. Each step one bag, each instance from a randomly chosen mirror image."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = GatedAttentionMIL(x.shape[-1], classes)
    labels = np.array([y[b[0]] for b in train_bags])
    counts = np.bincount(labels, minlength=classes)
    weights = len(labels) / (classes * np.maximum(counts, 1))  # balanced over bags, as class_weight="balanced"
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    model.train()
    for _ in range(EPOCHS):
        for i in rng.permutation(len(train_bags)):
            b = train_bags[i]
            inst = torch.from_numpy(x[b, rng.integers(0, 2, len(b))])
            logits, _ = model(inst)
            loss = loss_fn(logits[None], torch.tensor([labels[i]]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def per_slice(bag_p: np.ndarray, test_bags: list[np.ndarray]) -> np.ndarray:
    """Each bag's probabilities repeated for its slices, in the order of np.concatenate(test_bags)."""
    return np.concatenate([np.repeat(p[None], len(b), 0) for p, b in zip(bag_p, test_bags, strict=True)])


@torch.no_grad()
def bag_probabilities(models: list[GatedAttentionMIL], x: np.ndarray, test_bags: list[np.ndarray]) -> np.ndarray:
    """Per bag: softmax averaged over the seeds and both mirror images."""
    out = []
    for b in test_bags:
        probs = [torch.softmax(m(torch.from_numpy(x[b, v]))[0], -1) for m in models for v in (0, 1)]
        out.append(torch.stack(probs).mean(0).numpy())
    return np.stack(out)


def main(features: str = "full-224-avg") -> None:
    torch.set_num_threads(1)
    view, size, pool_name = features.split("-")
    z = np.load(SCREEN / "pool.npz", allow_pickle=False)
    classes = sorted(set(z["labels"].tolist()))
    y = np.array([classes.index(lbl) for lbl in z["labels"]])
    groups = z["groups"]
    x = load(view, int(size), pool_name).astype(np.float32)
    rows, t0 = [], time.time()
    for k in range(5):
        test = np.flatnonzero(z["parts"][k] == "test")
        dev = np.flatnonzero(z["parts"][k] != "test")
        mean, std = x[dev].reshape(-1, x.shape[-1]).mean(0), x[dev].reshape(-1, x.shape[-1]).std(0) + 1e-6
        xs = ((x - mean) / std).astype(np.float32)
        models = [train(xs, y, bags(groups, dev), len(classes), seed) for seed in range(SEEDS)]
        test_bags = bags(groups, test)
        bag_p = bag_probabilities(models, xs, test_bags)
        order = np.concatenate(test_bags)
        slice_p = per_slice(bag_p, test_bags)
        rows.append(fold_metrics(y[order], slice_p, groups[order], classes))
        print(f"fold {k + 1}: " + ", ".join(f"{key} {v:.3f}" for key, v in rows[-1].items()), flush=True)
    out = {"name": f"mil-{features}", "seconds": round(time.time() - t0, 1)}
    for key in rows[0]:
        v = np.array([r[key] for r in rows])
        out[key] = f"{np.nanmean(v):.3f} ± {np.nanstd(v, ddof=1):.3f}"
    print(out, flush=True)
    with (SCREEN / f"mil_{features}.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(out))
        w.writeheader()
        w.writerow(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
