"""Can a run's own features tell a slice like its training data from an input it should not be trusted on?

The measurement behind `lungct familiarity` (lungct.inference.familiarity): without it a figure, a screenshot or
an inverted slice gets a confident label, and only `lungct drift` notices, over a population.

Features: the run's pooled backbone features (what the prediction log stores as the embedding) of
- its training part: the reference (mean and Ledoit-Wolf covariance, scikit-learn);
- its validation part: the threshold, the 99th percentile of its distances;
- its test part: held-out patients, in distribution (the false-flag share is measured here);
- inputs the model should not be trusted on: the pneumonia CT set (figures from articles: CT, but another source
  and rendering), the test slices inverted, turned by 90 degrees, or shrunk onto a white page (a screenshot or a
  document), uniform noise, and the ImageNet cat that ../shared carries for the weights check.

Score: lungct.inference.familiarity, as `lungct familiarity` fits it (the squared Mahalanobis distance to the
training features over the validation part's 99th percentile). For each set: AUROC against the test part, and the
share flagged (novelty above 1).

    .venv/bin/python benchmarks/familiarity_probe.py [--run runs/demo]      # after `make demo`

Writes benchmarks/results/familiarity_probe.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from sklearn.metrics import roc_auc_score

from lungct.data.images import load_image
from lungct.data.splits import load_split
from lungct.inference import Predictor
from lungct.inference.familiarity import PERCENTILE, fit_familiarity, unfamiliar_share

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def features(predictor: Predictor, images: Iterable[Image.Image], batch: int = 32) -> np.ndarray:
    pre = predictor.card.preprocess
    arrays, out = [], []
    for img in images:
        arrays.append(pre.to_array(pre.apply_field(img)))
        if len(arrays) == batch:
            out.append(predictor.probabilities_and_features(np.stack(arrays))[1])
            arrays = []
    if arrays:
        out.append(predictor.probabilities_and_features(np.stack(arrays))[1])
    return np.concatenate(out).astype(np.float64)


def on_page(img: Image.Image) -> Image.Image:
    """The slice at a quarter of its size on a white page, as in a screenshot or a document."""
    page = Image.new("L", img.size, 255)
    small = img.resize((img.width // 4, img.height // 4))
    page.paste(small, (img.width // 8, img.height // 8))
    return page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "familiarity_probe.json")
    args = parser.parse_args()

    started = time.perf_counter()
    predictor = Predictor(args.run, familiarity=False)
    color = predictor.card.preprocess.color
    items = load_split(args.run / "split.csv")
    paths = {part: [i.path for i in items if i.part == part] for part in ("train", "val", "test")}

    def read(files: Iterable[str | Path], change: Callable[[Image.Image], Image.Image] = lambda im: im):
        return features(predictor, (change(load_image(p, color)) for p in files))

    train, val, test = (read(paths[part]) for part in ("train", "val", "test"))
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8)) for _ in range(20)]
    others = {
        "pneumonia CT (another source)": read(sorted((SHARED / "datasets" / "ct-pneumonia").rglob("*.jpg"))),
        "test slices inverted": read(paths["test"], ImageOps.invert),
        "test slices turned 90 degrees": read(paths["test"], lambda im: im.transpose(Image.Transpose.ROTATE_90)),
        "test slices on a white page": read(paths["test"], on_page),
        "uniform noise": features(predictor, noise),
        "ImageNet cat": read([SHARED / "weights" / "cat.jpg"]),
    }

    reference = fit_familiarity(train, val, predictor.run.weights, PERCENTILE)  # what `lungct familiarity` fits
    test_d = reference.novelty(test)
    rows = {"test part (held-out patients)": {"n": len(test), "flagged": unfamiliar_share(test_d), "auroc": None}}
    for name, feats in others.items():
        d = reference.novelty(feats)
        labels = np.r_[np.zeros(len(test_d)), np.ones(len(d))]
        rows[name] = {
            "n": len(d),
            "flagged": unfamiliar_share(d),
            "auroc": float(roc_auc_score(labels, np.r_[test_d, d])) if len(d) > 1 else None,
        }
    result = {
        "run": str(args.run),
        "score": "squared Mahalanobis distance to the training part's pooled features (Ledoit-Wolf covariance)",
        "threshold": f"{PERCENTILE:g}th percentile of the validation part's distances",
        "n_train": len(train),
        "n_val": len(val),
        "feature_dim": int(train.shape[1]),
        "sets": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, row in rows.items():
        auroc = "" if row["auroc"] is None else f"AUROC {row['auroc']:.3f}  "
        print(f"{name:34s} n={row['n']:4d}  {auroc}flagged {row['flagged']:.1%}")
    print(f"written to {args.output} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
