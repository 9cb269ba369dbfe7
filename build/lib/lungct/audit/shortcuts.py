"""Shortcuts: file properties that give away the label (or the source) without looking at the anatomy.

A network learns whatever separates the classes. If only malignant slices are 623x512, or one merged
source is all PNG, a high score may measure the file, not the disease. Categorical properties are flagged
per value that only one class has; continuous ones (intensity) when a class's one-vs-rest ROC AUC on the
property alone is beyond `auc_flag`.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
from sklearn.metrics import roc_auc_score

from lungct.data.scan import ImageInfo
from lungct.data.sources import Sample

AUC_FLAG = 0.9


def categorical_properties(samples: list[Sample], infos: list[ImageInfo]) -> dict[str, list[str]]:
    props = {
        "image_size": [f"{i.width}x{i.height}" for i in infos],
        "aspect_ratio": [f"{i.width / i.height:.2f}" for i in infos],
        "mode": [i.mode for i in infos],
        "format": [i.format for i in infos],
    }
    if len({s.source for s in samples}) > 1:
        props["source"] = [s.source for s in samples]
    return props


def continuous_properties(infos: list[ImageInfo]) -> dict[str, np.ndarray]:
    return {
        "intensity_mean": np.array([i.mean for i in infos]),
        "intensity_std": np.array([i.std for i in infos]),
    }


def _distribution(values: list[str], labels: list[str]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter] = defaultdict(Counter)
    for v, y in zip(values, labels, strict=True):
        table[y][v] += 1
    return {y: dict(c.most_common()) for y, c in sorted(table.items())}


def label_from_property_accuracy(values: list[str], labels: list[str]) -> float:
    """Accuracy of predicting the label from the property value alone (majority class per value)."""
    per_value: dict[str, Counter] = defaultdict(Counter)
    for v, y in zip(values, labels, strict=True):
        per_value[v][y] += 1
    return sum(c.most_common(1)[0][1] for c in per_value.values()) / len(labels)


def find_shortcuts(
    samples: list[Sample], infos: list[ImageInfo], min_count: int = 1, auc_flag: float = AUC_FLAG
) -> tuple[list[dict], dict]:
    """(shortcuts, per-property summary). Each shortcut is {property, value, classes, count[, auc]}."""
    labels = [s.label for s in samples]
    n = len(labels)
    baseline = Counter(labels).most_common(1)[0][1] / n if n else 0.0
    shortcuts: list[dict] = []
    summary: dict[str, dict] = {}
    for prop, values in categorical_properties(samples, infos).items():
        classes_of: dict[str, Counter] = defaultdict(Counter)
        for v, y in zip(values, labels, strict=True):
            classes_of[v][y] += 1
        if len(classes_of) > 1:  # a property with one value everywhere predicts nothing
            for value, counts in sorted(classes_of.items(), key=lambda kv: -sum(kv[1].values())):
                if len(counts) == 1 and sum(counts.values()) >= min_count:
                    (cls,) = counts
                    shortcuts.append(
                        {"property": prop, "value": value, "classes": [cls], "count": counts[cls], "of_class": None}
                    )
        summary[prop] = {
            "per_class": _distribution(values, labels),
            "label_accuracy_from_property": round(label_from_property_accuracy(values, labels), 4),
            "majority_baseline": round(baseline, 4),
        }
    class_sizes = Counter(labels)
    for s in shortcuts:
        s["of_class"] = class_sizes[s["classes"][0]]
    for prop, values in continuous_properties(infos).items():
        per_class = {}
        for cls in sorted(class_sizes):
            mask = np.array([y == cls for y in labels])
            v = values[mask]
            per_class[cls] = {
                "median": float(np.median(v)),
                "q25": float(np.percentile(v, 25)),
                "q75": float(np.percentile(v, 75)),
            }
            if 0 < mask.sum() < n:
                auc = float(roc_auc_score(mask, values))
                if max(auc, 1 - auc) >= auc_flag:
                    side = "higher" if auc >= 0.5 else "lower"
                    shortcuts.append(
                        {
                            "property": prop,
                            "value": f"{side} than other classes ({v.min():.1f}-{v.max():.1f})",
                            "classes": [cls],
                            "count": int(mask.sum()),
                            "of_class": int(mask.sum()),
                            "auc": round(auc, 4),
                        }
                    )
                per_class[cls]["auc_one_vs_rest"] = round(auc, 4)
        summary[prop] = {"per_class": per_class}
    return shortcuts, summary


def source_differences(samples: list[Sample], infos: list[ImageInfo], auc_flag: float = 0.8) -> list[dict]:
    """Merged sources that differ systematically: a property whose values (nearly) tell the sources apart.

    Such a difference becomes a label shortcut as soon as the sources carry different classes.
    """
    sources = [s.source for s in samples]
    if len(set(sources)) < 2:
        return []
    found = []
    cats = categorical_properties(samples, infos)
    cats.pop("source", None)
    for prop, values in cats.items():
        acc = label_from_property_accuracy(values, sources)
        base = Counter(sources).most_common(1)[0][1] / len(sources)
        if acc >= 0.95 and acc > base + 0.02:
            found.append(
                {
                    "property": prop,
                    "detail": f"{prop} alone tells the source in {acc:.0%} of images (majority {base:.0%})",
                    "per_source": _distribution(values, sources),
                }
            )
    for prop, values in continuous_properties(infos).items():
        for src in sorted(set(sources)):
            mask = np.array([s == src for s in sources])
            auc = float(roc_auc_score(mask, values))
            if max(auc, 1 - auc) >= auc_flag:
                found.append(
                    {
                        "property": prop,
                        "detail": f"source {src!r} vs the rest: ROC AUC {auc:.2f} from {prop} alone",
                        "median_in_source": float(np.median(values[mask])),
                        "median_elsewhere": float(np.median(values[~mask])),
                    }
                )
    return found
