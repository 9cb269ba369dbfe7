"""The scan and the grouping at scale: a 20,000-row manifest of tiny images.

Nothing here is timed (this machine may be busy): the tests count what ran. What they rule out is the old
behaviour, all-pairs thumbnail comparison (2e8 pairs of 4096-value thumbnails) and a second scan that decodes
every file again. Measured figures for the doc come from benchmarks/scale.py, not from here.
"""

from __future__ import annotations

import csv
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungct.config import parse_config
from lungct.data import grouping, scan
from lungct.data.prepare import prepare_data
from lungct.data.scan_cache import ScanCache, file_key
from lungct.data.sources import collect_samples

N = 20_000
LABELS = ("benign", "malignant", "normal")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """20,000 small noise JPEGs (96 px: cheap to write, but decoded and resized as a scan of real slices is,
    though at a fifth of a 512 px slice's cost) in 400 patients; rows 5 and 19,005 are one picture saved twice
    with one pixel changed (a leak across two patients, far apart in the manifest, that only the look-alike
    pairs can find)."""
    root = tmp_path_factory.mktemp("scale")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    twin = rng.integers(0, 256, (96, 96), dtype=np.uint8)
    rows = []
    for i in range(N):
        pixels = twin if i in (5, N - 995) else rng.integers(0, 256, (96, 96), dtype=np.uint8)
        name = f"images/s{i:05d}.jpg"
        Image.fromarray(pixels, mode="L").save(root / name, quality=90)
        rows.append({"path": name, "label": LABELS[(i // 50) % 3], "group": f"p{i // 50:04d}"})
    # one pixel differs between the twins, so they are near-identical, not byte-identical (not a hash match)
    twin_b = twin.copy()
    twin_b[0, 0] ^= 0x80
    Image.fromarray(twin_b, mode="L").save(root / f"images/s{N - 995:05d}.jpg", quality=90)
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


def test_scan_runs_in_workers_then_hits_the_cache_and_grouping_is_not_all_pairs(manifest, monkeypatch, tmp_path):
    monkeypatch.setenv("LUNGCT_CACHE_DIR", str(tmp_path / "cache"))
    pools = []

    class RecordingPool(scan.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self._max_workers)

    def no_all_pairs(thumbs, threshold):
        assert len(thumbs) <= grouping.EXACT_PAIRS_LIMIT, f"all-pairs comparison of {len(thumbs)} thumbnails"
        return exact(thumbs, threshold)

    exact = grouping.exact_similarity_pairs
    monkeypatch.setattr(scan, "ProcessPoolExecutor", RecordingPool)
    monkeypatch.setattr(grouping, "exact_similarity_pairs", no_all_pairs)
    cfg = parse_config({"data": {"sources": [{"path": str(manifest)}], "scan_workers": 2}, "split": {"mode": "group"}})

    samples = collect_samples(cfg.data)
    assert len(samples) == N

    cold = scan.scan_samples(samples, progress=False, workers=2)
    assert pools == [2], "the first scan did not run on two worker processes"
    assert len(cold.samples) == N and not cold.skipped

    # The second scan must decode nothing: every file comes from the cache. Counted, not timed (a busy machine
    # makes timings flaky; benchmarks/scale.py measures the speed-up).
    decoded = []

    def counting_describe(path, **kwargs):
        decoded.append(path)
        return describe(path, **kwargs)

    describe = scan.describe_or_reason
    monkeypatch.setattr(scan, "describe_or_reason", counting_describe)
    warm = scan.scan_samples(samples, progress=False, workers=2)
    assert pools == [2], "the second scan started workers: the cache missed"
    assert decoded == [], f"the second scan decoded {len(decoded)} files again"
    assert [i.sha256 for i in warm.infos] == [i.sha256 for i in cold.infos]

    tracemalloc.start()
    data = prepare_data(cfg, progress=False)  # the scan from the cache, then the grouping
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert decoded == [], f"prepare_data decoded {len(decoded)} files again"
    assert peak < 2 * 1024**3, f"grouping {N} images peaked at {peak / 2**20:.0f} MiB"
    # The twins' patients were merged into one group (the hashed pairs found them); nothing else merged.
    assert data.groups[5] == data.groups[N - 995]
    assert len(set(data.groups)) == N // 50 - 1


def test_a_changed_file_is_scanned_again_and_a_damaged_cache_starts_afresh(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGCT_CACHE_DIR", str(tmp_path / "cache"))
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(image)
    cache = ScanCache()
    cache.store([(file_key(str(image)), "not an image (test entry)")])
    cache.close()
    key = file_key(str(image))
    assert ScanCache().lookup([key]) == {key.path: "not an image (test entry)"}
    Image.fromarray(np.full((9, 9), 7, np.uint8), mode="L").save(image)  # new size and mtime
    assert ScanCache().lookup([file_key(str(image))]) == {}
    (tmp_path / "cache" / "scan.sqlite").write_bytes(b"this is not a database" * 100)
    fresh = ScanCache()
    assert fresh.db is not None and fresh.lookup([file_key(str(image))]) == {}


def test_hashed_pairs_find_what_all_pairs_find_on_correlated_thumbnails():
    """Near-duplicates among strongly correlated thumbnails (as CT slices are): the hashed search finds
    the pairs above 0.97 that the exact search finds."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((50, 4096)).astype(np.float32)
    thumbs = np.repeat(base, 4, axis=0) + 0.15 * rng.standard_normal((200, 4096)).astype(np.float32)
    thumbs -= thumbs.mean(1, keepdims=True)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True)
    exact = set(zip(*[a.tolist() for a in grouping.exact_similarity_pairs(thumbs, 0.97)], strict=True))
    hashed = set(zip(*[a.tolist() for a in grouping.hashed_similarity_pairs(thumbs, 0.97)], strict=True))
    assert len(exact) == 50 * 6 and hashed == exact
