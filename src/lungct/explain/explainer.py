"""The explanation API shared by the CLI, the REST service and the web app.

`Explainer(run_dir)` loads a run once (through `lungct.inference.Predictor`, so reported probabilities are
the calibrated ones the predictor serves) and turns slices into `Explanation`s: a heatmap at the slice's
own size plus the class it explains and that class's probability.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lungct.config import ExperimentConfig, load_config
from lungct.data.images import ImageReadError
from lungct.data.transforms import prepare_image
from lungct.errors import LungCTError
from lungct.explain.cam import METHODS, compute_cams, to_image_size
from lungct.explain.layers import GROUPS, check_feature_maps, default_layers, layer_group, resolve_names


@dataclass
class Explanation:
    heatmap: np.ndarray  # (H, W) float32 in [0, 1] at the input slice's size
    label: str  # the class explained
    probability: float  # that class's probability
    predicted: str
    probabilities: dict[str, float]
    method: str
    layers: list[str]
    layer_spec: str  # what was asked for: "default", a group name, or the layer names
    path: str | None = None
    image: Image.Image | None = field(default=None, repr=False)  # the decoded slice, for overlays
    features: np.ndarray | None = field(default=None, repr=False)  # pooled backbone features (drift embedding)

    def to_dict(self) -> dict:
        """JSON-ready summary without the arrays (the REST service adds the heatmap as it sees fit)."""
        return {
            "path": self.path,
            "label": self.label,
            "probability": round(self.probability, 6),
            "predicted": self.predicted,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "method": self.method,
            "layers": self.layer_spec,
            "n_layers": len(self.layers),
            "height": int(self.heatmap.shape[0]),
            "width": int(self.heatmap.shape[1]),
        }


class Explainer:
    def __init__(self, run_dir: str | Path, batch_size: int = 8, hu_offset: int | None = None):
        """hu_offset: the files are 16-bit CT exports storing HU + hu_offset (lungct.inference.Predictor)."""
        from lungct.inference import Predictor

        self.predictor = Predictor(run_dir, batch_size=batch_size, hu_offset=hu_offset)
        self.run = self.predictor.run
        self.model = self.predictor.model
        self.card = self.predictor.card
        self.classes = list(self.card.classes)
        self.batch_size = batch_size
        self._config: ExperimentConfig | None = None

    @property
    def config(self) -> ExperimentConfig:
        if self._config is None:
            if not self.run.config.is_file():
                raise LungCTError(f"{self.run.path} has no config.yaml, so its frozen layers are unknown")
            self._config = load_config(self.run.config)
        return self._config

    def resolve_layers(self, layers: Iterable[str] | None = None, group: str | None = None) -> tuple[list[str], str]:
        """(layer names, description): named layers, a group, or the backbone's default layer."""
        layers = list(layers or [])
        size = self.card.preprocess.input_size
        if layers and group:
            raise LungCTError("give either layer names or a layer group, not both")
        if group:
            if group not in GROUPS:
                raise LungCTError(f"unknown layer group {group!r}; choose one of: {', '.join(GROUPS)}")
            return layer_group(self.model, group, self.config, self.card.pretrained, size), group
        names = [r for n in layers for r in resolve_names(self.model, n)] or default_layers(self.model, self.card.arch)
        check_feature_maps(self.model, names, size)
        return names, ",".join(names) if layers else "default"

    def class_index(self, target: str | None) -> int | None:
        if target is None:
            return None
        if target not in self.classes:
            raise LungCTError(f"class {target!r} is not in the model; its classes are: {', '.join(self.classes)}")
        return self.classes.index(target)

    def explain_images(
        self,
        images: list[Image.Image],
        method: str = "gradcam",
        layers: Iterable[str] | None = None,
        group: str | None = None,
        target: str | None = None,
        paths: list[str | None] | None = None,
    ) -> list[Explanation]:
        """Explain decoded slices (one batch): the predicted class by default, or `target`."""
        if method not in METHODS:
            raise LungCTError(f"unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
        names, spec = self.resolve_layers(layers, group)
        wanted = self.class_index(target)
        return self._explain(images, method, names, spec, wanted, paths or [None] * len(images))

    def _explain(self, images, method, names, spec, wanted, paths) -> list[Explanation]:
        pre = self.card.preprocess
        batch = torch.stack([prepare_image(img.convert("L" if pre.color == "grey" else "RGB"), pre) for img in images])
        probs, features = self.predictor.probabilities_and_features(batch)
        targets = [int(p.argmax()) if wanted is None else wanted for p in probs]
        cams = compute_cams(self.model, batch, names, targets, method)
        out = []
        for img, cam, p, f, t, path in zip(images, cams, probs, features, targets, paths, strict=True):
            out.append(
                Explanation(
                    heatmap=to_image_size(cam, img.width, img.height, pre),
                    label=self.classes[t],
                    probability=float(p[t]),
                    predicted=self.classes[int(p.argmax())],
                    probabilities={c: float(v) for c, v in zip(self.classes, p, strict=True)},
                    method=method,
                    layers=names,
                    layer_spec=spec,
                    path=path,
                    image=img,
                    features=f,
                )
            )
        return out

    def explain_paths(
        self,
        paths: Iterable[str | Path],
        method: str = "gradcam",
        layers: Iterable[str] | None = None,
        group: str | None = None,
        target: str | None = None,
    ) -> Iterator[Explanation | ImageReadError]:
        """One Explanation per readable file, in order; an ImageReadError in place of an unreadable one.

        Layers, method and class are checked before any image is read, so a bad request fails at once.
        """
        if method not in METHODS:
            raise LungCTError(f"unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
        names, spec = self.resolve_layers(layers, group)
        wanted = self.class_index(target)
        batch: list[tuple[str, Image.Image]] = []
        for path in paths:
            try:
                batch.append((str(path), self.card.preprocess.load(path)))
            except ImageReadError as exc:
                yield exc
                continue
            if len(batch) == self.batch_size:
                yield from self._explain([i for _, i in batch], method, names, spec, wanted, [p for p, _ in batch])
                batch = []
        if batch:
            yield from self._explain([i for _, i in batch], method, names, spec, wanted, [p for p, _ in batch])


def explain(
    run_dir: str | Path,
    image: Image.Image | str | Path,
    method: str = "gradcam",
    layers: Iterable[str] | None = None,
    group: str | None = None,
    target: str | None = None,
) -> Explanation:
    """One-off convenience: load the run and explain one slice (services should keep an Explainer)."""
    explainer = Explainer(run_dir, batch_size=1)
    if not isinstance(image, Image.Image):
        path = str(image)
        try:
            image = explainer.card.preprocess.load(image)
        except ImageReadError as exc:
            raise LungCTError(str(exc)) from None
        return explainer.explain_images([image], method, layers, group, target, [path])[0]
    return explainer.explain_images([image], method, layers, group, target)[0]
