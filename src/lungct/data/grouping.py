"""Look-alike groups: an approximation of "same patient" for datasets that have no patient ids.

IQ-OTH/NCCD gives about ten slices per patient with neighbouring file numbers and no patient column.
Splitting those slices at random leaks the patient into the test set. We link (a) byte-identical files,
(b) any two near-identical images, and (c) neighbouring slices of one class folder that still look
alike, and take connected components. Over-merging only makes evaluation stricter; under-merging leaks.
On the shared IQ-OTH/NCCD copy the thresholds below give about 110 groups and no group spans two classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lungct.data.scan import ImageInfo
from lungct.data.sources import Sample

_BLOCK = 1024
# Up to this many images every pair is compared (exact; a few seconds). Beyond it, all pairs would grow as n^2
# (100k slices: 5e9 pairs), so candidate pairs come from locality-sensitive hashing and are then checked exactly.
EXACT_PAIRS_LIMIT = 4096
# SimHash (random hyperplanes): BANDS bands of BITS bits. Two thumbnails at correlation c agree on one bit with
# probability 1 - arccos(c)/pi; a pair is a candidate when one whole band agrees. At c = 0.92 (the default
# duplicate threshold) that misses a pair with probability (1 - 0.872^16)^32 = 2%; at c = 0.97, 0.003%.
BANDS, BITS = 32, 16
_BUCKET_CAP = 2048  # a bucket this large is compared blockwise, never expanded into a list of pairs


def similarity_pairs(thumbs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) whose thumbnail correlation exceeds `threshold`: every pair up to
    EXACT_PAIRS_LIMIT images, candidate pairs from SimHash buckets beyond it (see BANDS, BITS)."""
    if len(thumbs) <= EXACT_PAIRS_LIMIT:
        return exact_similarity_pairs(thumbs, threshold)
    return hashed_similarity_pairs(thumbs, threshold)


def exact_similarity_pairs(thumbs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair compared, blockwise (n^2 / 2 dot products)."""
    rows, cols = [], []
    for start in range(0, len(thumbs), _BLOCK):
        sims = thumbs[start : start + _BLOCK] @ thumbs.T
        i, j = np.nonzero(sims > threshold)
        i = i + start
        keep = i < j
        rows.append(i[keep])
        cols.append(j[keep])
    if not rows:
        return np.empty(0, int), np.empty(0, int)
    return np.concatenate(rows), np.concatenate(cols)


def simhash_codes(thumbs: np.ndarray, bands: int = BANDS, bits: int = BITS, seed: int = 0) -> np.ndarray:
    """(n, bands * bits / 8) bytes: the signs of each thumbnail's projections on seeded random hyperplanes."""
    planes = np.random.default_rng(seed).standard_normal((thumbs.shape[1], bands * bits)).astype(np.float32)
    codes = np.empty((len(thumbs), bands * bits // 8), dtype=np.uint8)
    for start in range(0, len(thumbs), _BLOCK):
        codes[start : start + _BLOCK] = np.packbits(thumbs[start : start + _BLOCK] @ planes > 0, axis=1)
    return codes


def hashed_similarity_pairs(thumbs: np.ndarray, threshold: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs above `threshold` among those that share a SimHash band: memory and time grow with n and with the
    number of look-alike pairs, not with n^2. May miss a pair near the threshold (see BANDS, BITS)."""
    n = len(thumbs)
    codes = simhash_codes(thumbs, seed=seed)
    keys = codes.view(f">u{BITS // 8}")  # (n, BANDS): one integer per band
    candidates = [np.empty(0, np.int64)]
    rows, cols = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for band in keys.T:
        order = np.argsort(band, kind="stable")
        edges = np.flatnonzero(np.diff(band[order])) + 1
        starts, sizes = np.r_[0, edges], np.diff(np.r_[0, edges, n])
        # Buckets of one size at a time, as an (m, size) array: their pairs come out without a Python loop
        # over buckets (100k slices give tens of thousands of small buckets per band).
        for size in np.unique(sizes[sizes >= 2]):
            firsts = starts[sizes == size]
            if size > _BUCKET_CAP:  # a huge bucket: compared blockwise, never expanded into a list of pairs
                for first in firsts:
                    sub = np.sort(order[first : first + size])
                    i, j = exact_similarity_pairs(thumbs[sub], threshold)
                    rows.append(sub[i])
                    cols.append(sub[j])
                continue
            members = np.sort(order[firsts[:, None] + np.arange(size)], axis=1)
            a, b = np.triu_indices(size, k=1)
            candidates.append((members[:, a] * n + members[:, b]).ravel())
    pairs = np.unique(np.concatenate(candidates))
    # Cheap first: the share of all BANDS * BITS signs two thumbnails disagree on estimates their angle, so a
    # pair far beyond the threshold's expected count (plus 6 standard deviations) is not correlated enough.
    total = BANDS * BITS
    p_differ = np.arccos(np.clip(threshold, -1, 1)) / np.pi
    limit = total * p_differ + 6 * np.sqrt(total * p_differ * (1 - p_differ)) + 1
    for start in range(0, len(pairs), 65536):
        i, j = np.divmod(pairs[start : start + 65536], n)
        near = np.bitwise_count(codes[i] ^ codes[j]).sum(axis=1) <= limit
        i, j = i[near], j[near]
        keep = np.einsum("ij,ij->i", thumbs[i], thumbs[j]) > threshold  # the exact check
        rows.append(i[keep])
        cols.append(j[keep])
    found = np.unique(np.concatenate(rows) * n + np.concatenate(cols))
    return np.divmod(found, n)


def lookalike_groups(
    samples: list[Sample], infos: list[ImageInfo], neighbour_similarity: float = 0.5, duplicate_similarity: float = 0.92
) -> list[str]:
    """A group id per sample. Given groups are kept, and merged where they share a (near) duplicate."""
    n = len(samples)
    if n == 0:
        return []
    thumbs = np.stack([info.thumb for info in infos])
    rows, cols = [list(a) for a in similarity_pairs(thumbs, duplicate_similarity)]

    by_hash: dict[str, int] = {}
    by_group: dict[str, int] = {}
    for i, (sample, info) in enumerate(zip(samples, infos, strict=True)):
        for key, table in ((info.sha256, by_hash), (sample.group, by_group)):
            if key is None:
                continue
            if key in table:
                rows.append(table[key])
                cols.append(i)
            else:
                table[key] = i
        # Neighbouring slices: consecutive samples of one ungrouped class folder (natural sort order).
        if i > 0 and sample.group is None and samples[i - 1].group is None:
            prev = samples[i - 1]
            same_folder = Path(prev.path).parent == Path(sample.path).parent
            if same_folder and float(thumbs[i - 1] @ thumbs[i]) > neighbour_similarity:
                rows.append(i - 1)
                cols.append(i)

    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    return [f"g{c:05d}" for c in component]
