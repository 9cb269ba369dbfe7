"""One pass over the images: drop unreadable files (with reasons) and record what grouping and audits need.

At scale (100k+ slices) the pass runs in worker processes and its results are kept in a cache
(lungct.data.scan_cache) keyed by path, size and modification time, so a second run over unchanged files
reads them back instead of decoding and hashing every image again.
"""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from lungct.data.image_info import THUMB_SIZE, ImageInfo
from lungct.data.images import ImageReadError, load_image
from lungct.data.scan_cache import ScanCache, cache_dir, file_key
from lungct.data.sources import Sample

__all__ = ["THUMB_SIZE", "ImageInfo", "ScanResult", "Skipped", "describe_image", "scan_samples"]


@dataclass
class Skipped:
    path: str  # as shown to the user: a name that is not text has its undecodable bytes as \xNN escapes
    reason: str


NOT_UTF8 = "file name is not valid UTF-8; rename it"


def name_problem(path: str) -> str | None:
    """Why a path cannot be kept, or None. A name whose bytes do not decode reaches Python with surrogate
    escapes, which no UTF-8 text (the scan cache, split.csv, summary.json) can hold: such a file is skipped here,
    with its reason, so that nothing later meets it."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    try:
        os.fsencode(path).decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return NOT_UTF8
    # valid UTF-8 bytes, decoded with a non-UTF-8 locale's codec (LC_ALL=C with Python's UTF-8 mode off)
    return (
        f"file name is not {sys.getfilesystemencoding()} text (the locale's encoding); "
        "run with PYTHONUTF8=1 or a UTF-8 locale such as LANG=C.UTF-8, or rename it"
    )


def printable_path(path: str) -> str:
    """The path as text for messages and reports, whatever bytes its name holds."""
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class ScanResult:
    samples: list[Sample]
    infos: list[ImageInfo]
    skipped: list[Skipped]


def describe_image(path: str | Path, hu_offset: int | None = None) -> ImageInfo:
    grey = load_image(path, "grey", hu_offset=hu_offset)  # first, so unreadable files fail with a clear reason
    data = Path(path).read_bytes()
    try:
        with Image.open(path) as raw:
            mode, fmt = raw.mode, raw.format or Path(path).suffix.lstrip(".").upper()
    except UnidentifiedImageError:  # DICOM: decoded by lungct.dicom (through load_image), not by Pillow
        mode, fmt = grey.mode, "DICOM"
    arr = np.asarray(grey, dtype=np.float32)
    thumb = np.asarray(grey.resize((THUMB_SIZE, THUMB_SIZE), Image.BILINEAR), dtype=np.float32).ravel()
    thumb -= thumb.mean()
    thumb /= np.linalg.norm(thumb) + 1e-8
    return ImageInfo(
        hashlib.sha256(data).hexdigest(), grey.width, grey.height, mode, fmt, float(arr.mean()), float(arr.std()), thumb
    )


PARALLEL_MIN = 512  # files to scan below which starting worker processes costs more than it saves


def default_scan_workers() -> int:
    """The cores this process may use, at most 8 (decoding is bounded by the disk beyond that)."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def scan_samples(
    samples: list[Sample],
    progress: bool = True,
    workers: int | None = None,
    cache: bool = True,
    hu_offset: int | None = None,
) -> ScanResult:
    """Each sample described (or skipped, with its reason), in order; from the cache where the file is unchanged,
    otherwise on `workers` processes (default: default_scan_workers) when there are many files to read.

    hu_offset: read 16-bit files as HU + offset, as training will (lungct.data.images); a wrong offset then skips
    them here with its reason rather than failing mid-training. Such scans keep a cache of their own."""
    problems = [name_problem(s.path) for s in samples]
    keys = [None if problem else file_key(s.path) for s, problem in zip(samples, problems, strict=True)]
    store = ScanCache(None if hu_offset is None else cache_dir() / f"scan-hu{hu_offset}.sqlite") if cache else None
    known = store.lookup([k for k in keys if k is not None]) if store else {}
    results: list[ImageInfo | str | None] = [
        problem or (known.get(k.path) if k else None) for k, problem in zip(keys, problems, strict=True)
    ]
    todo = [i for i, r in enumerate(results) if r is None]
    describe = partial(describe_or_reason, hu_offset=hu_offset)
    fresh = _describe_all([samples[i].path for i in todo], progress, workers or default_scan_workers(), describe)
    to_store = []
    for i, (result, cacheable) in zip(todo, fresh, strict=True):
        results[i] = result
        if cacheable and keys[i] is not None:
            to_store.append((keys[i], result))
    if store is not None:
        store.store(to_store)
        store.close()
    kept, infos, skipped = [], [], []
    for sample, result in zip(samples, results, strict=True):
        if isinstance(result, ImageInfo):
            kept.append(sample)
            infos.append(result)
        else:
            skipped.append(Skipped(printable_path(sample.path), str(result)))
    return ScanResult(kept, infos, skipped)


def describe_or_reason(path: str, hu_offset: int | None = None) -> tuple[ImageInfo | str, bool]:
    """(the image's description, or why it was skipped; whether that may be cached). A file that cannot be
    opened (permissions, a vanished mount) is not cached: fixing it does not change its size or mtime."""
    try:
        return describe_image(path, hu_offset), True
    except ImageReadError as exc:
        return exc.reason, True
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})", False


def _describe_all(paths: list[str], progress: bool, workers: int, describe) -> list[tuple[ImageInfo | str, bool]]:
    bar = {"desc": "checking images", "disable": not progress, "leave": False, "total": len(paths)}
    if workers < 2 or len(paths) < PARALLEL_MIN:
        return [describe(p) for p in tqdm(paths, **bar)]
    # fork where there is one: the workers run Pillow, numpy and hashlib only, never the parent's PyTorch thread
    # pools; spawn would import the caller's __main__ again in every worker (which fails for a notebook, stdin
    # or a script without a __main__ guard) and costs a second per worker
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=get_context(method)) as pool:
        chunk = max(16, len(paths) // (workers * 32))
        return list(tqdm(pool.map(describe, paths, chunksize=chunk), **bar))
