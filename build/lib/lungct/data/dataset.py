"""A torch Dataset over image paths that decodes and resizes each image once, then caches it.

Decoding a 512x512 JPEG costs more than augmenting the resized copy; on a 2-core CPU the cache saves
several seconds per epoch. The cache holds one small image per file (about 64 KB at 256x256 grey).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from lungct.data.transforms import Preprocess, resize_transform


class CTImageDataset(Dataset):
    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int],
        pre: Preprocess,
        transform: Callable[[Image.Image], torch.Tensor],
        cache: bool = True,
    ):
        self.paths = list(paths)
        self.targets = list(targets)
        self.pre = pre
        self.transform = transform
        self._resize = resize_transform(pre)
        self._cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, index: int) -> Image.Image:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        img = self._resize(self.pre.load(self.paths[index]))
        if self._cache is not None:
            self._cache[index] = img
        return img

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self._image(index)), self.targets[index]
