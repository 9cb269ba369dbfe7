"""Exact duplicates (same bytes) and near duplicates (same picture after re-encoding, a small shift or rescale).

Near duplicates need two signals to agree: the perceptual hash (imagehash.phash, robust to re-encoding and
small shifts) within `max_hamming` bits, and the 64x64 thumbnail correlation (ImageInfo.thumb) at least
`min_correlation`. CT slices all share a dark background and a body outline, so phash alone links many
different slices; the correlation check keeps only pairs that show the same picture.
"""

from __future__ import annotations

from collections import defaultdict

import imagehash
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lungct.data.grouping import similarity_pairs
from lungct.data.images import load_image
from lungct.data.scan import ImageInfo
from lungct.data.sources import Sample

MAX_HAMMING = 8
MIN_CORRELATION = 0.97


def perceptual_hashes(paths: list[str], hu_offset: int | None = None) -> np.ndarray:
    """64-bit phash of each (already readable) image as a uint64 array."""
    out = np.empty(len(paths), dtype=np.uint64)
    for i, path in enumerate(paths):
        bits = imagehash.phash(load_image(path, "grey", hu_offset=hu_offset)).hash.ravel()
        out[i] = int("".join("1" if b else "0" for b in bits), 2)
    return out


def _group_record(kind: str, members: list[int], samples: list[Sample]) -> dict:
    classes = sorted({samples[i].label for i in members})
    return {
        "kind": kind,
        "paths": [samples[i].path for i in members],
        "classes": classes,
        "cross_class": len(classes) > 1,
    }


def exact_duplicates(samples: list[Sample], infos: list[ImageInfo]) -> list[dict]:
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, info in enumerate(infos):
        by_hash[info.sha256].append(i)
    return [_group_record("exact", m, samples) for m in by_hash.values() if len(m) > 1]


def near_duplicates(
    samples: list[Sample],
    infos: list[ImageInfo],
    hashes: np.ndarray,
    max_hamming: int = MAX_HAMMING,
    min_correlation: float = MIN_CORRELATION,
) -> list[dict]:
    """Groups (connected components) of near-identical images that are not all byte-identical copies."""
    n = len(samples)
    if n < 2:
        return []
    thumbs = np.stack([info.thumb for info in infos])
    rows, cols = similarity_pairs(thumbs, min_correlation - 1e-6)
    distance = np.bitwise_count(hashes[rows] ^ hashes[cols])
    keep = distance <= max_hamming
    rows, cols = rows[keep], cols[keep]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    members: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(component):
        members[c].append(i)
    groups = []
    for m in members.values():
        if len(m) > 1 and len({infos[i].sha256 for i in m}) > 1:
            groups.append(_group_record("near", m, samples))
    return groups


def find_duplicates(
    samples: list[Sample],
    infos: list[ImageInfo],
    hashes: np.ndarray,
    max_hamming: int = MAX_HAMMING,
    min_correlation: float = MIN_CORRELATION,
) -> list[dict]:
    """Exact groups first, then near groups; each {kind, paths, classes, cross_class}."""
    return exact_duplicates(samples, infos) + near_duplicates(samples, infos, hashes, max_hamming, min_correlation)
