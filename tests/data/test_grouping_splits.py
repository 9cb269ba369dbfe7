import hashlib
from collections import defaultdict

import numpy as np
import pytest

from lungct.config import parse_config
from lungct.data.grouping import lookalike_groups
from lungct.data.prepare import prepare_data, split_items
from lungct.data.scan import scan_samples
from lungct.data.sources import Sample
from lungct.data.splits import make_split
from tests.conftest import IQ_OTH, needs_shared, synthetic_slice


def _parts_per_group(items) -> dict[str, set[str]]:
    parts = defaultdict(set)
    for item in items:
        parts[item.group].add(item.part)
    return parts


def test_groups_never_cross_parts_and_classes_are_stratified():
    rng = np.random.default_rng(0)
    labels, groups = [], []
    for g in range(60):
        label = ["a", "b", "c"][g % 3]
        for _ in range(rng.integers(1, 12)):
            labels.append(label)
            groups.append(f"p{g}")
    parts = make_split(labels, groups, 0.15, 0.15, seed=1)
    by_group = defaultdict(set)
    for g, p in zip(groups, parts, strict=True):
        by_group[g].add(p)
    assert all(len(p) == 1 for p in by_group.values())
    for part in ("train", "val", "test"):
        assert {lab for lab, p in zip(labels, parts, strict=True) if p == part} == {"a", "b", "c"}
    share = parts.count("test") / len(parts)
    assert 0.07 < share < 0.25


def test_lookalike_grouping_links_duplicates_and_neighbours(tmp_path):
    paths = []
    for i, (kind, seed) in enumerate([(0, 1), (0, 1), (1, 2), (2, 3)]):
        p = tmp_path / f"s ({i + 1}).png"
        synthetic_slice(kind, seed, size=64).save(p)
        paths.append(p)
    # a copy of slice 1 far away in the folder order, and a re-saved (not byte-identical) copy
    (tmp_path / "s (9).png").write_bytes(paths[0].read_bytes())
    samples = [Sample(str(p), "x", source="t") for p in sorted(tmp_path.iterdir())]
    scan = scan_samples(samples, progress=False)
    groups = dict(zip([s.path for s in scan.samples], lookalike_groups(scan.samples, scan.infos), strict=True))
    g = [groups[str(tmp_path / f"s ({i}).png")] for i in (1, 2, 3, 4, 9)]
    assert g[0] == g[1] == g[4]  # identical images and the byte-identical copy
    assert g[2] != g[0] and g[3] != g[0]  # different-looking slices are not merged


def test_given_groups_merge_across_duplicates(tmp_path):
    synthetic_slice(0, 5).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    synthetic_slice(1, 6).save(tmp_path / "c.png")
    samples = [
        Sample(str(tmp_path / "a.png"), "x", "p1"),
        Sample(str(tmp_path / "b.png"), "x", "p2"),
        Sample(str(tmp_path / "c.png"), "x", "p1"),
    ]
    scan = scan_samples(samples, progress=False)
    groups = lookalike_groups(scan.samples, scan.infos)
    assert len(set(groups)) == 1  # p1 and p2 share a duplicate, so they are one group


@needs_shared
def test_shared_dataset_group_split_keeps_identical_pairs_together():
    cfg = parse_config({"data": {"sources": [{"path": str(IQ_OTH)}]}, "split": {"mode": "group"}})
    data = prepare_data(cfg, progress=False)
    items = split_items(data, cfg)
    assert all(len(p) == 1 for p in _parts_per_group(items).values())
    part_of = {i.path: i.part for i in items}
    by_hash = defaultdict(list)
    for item in items:
        with open(item.path, "rb") as fh:
            by_hash[hashlib.sha256(fh.read()).hexdigest()].append(item.path)
    pairs = [paths for paths in by_hash.values() if len(paths) > 1]
    assert len(pairs) == 25  # the shared README's byte-identical pairs
    assert all(len({part_of[p] for p in paths}) == 1 for paths in pairs)
    n_groups = len({i.group for i in items})
    assert 60 <= n_groups <= 200, n_groups  # about ten slices per patient


@needs_shared
def test_random_split_of_shared_dataset_does_leak():
    """The control for the test above: a random split puts byte-identical pairs on both sides."""
    cfg = parse_config({"data": {"sources": [{"path": str(IQ_OTH)}]}, "split": {"mode": "random"}})
    data = prepare_data(cfg, progress=False)
    items = split_items(data, cfg)
    part_of = {i.path: i.part for i in items}
    by_hash = defaultdict(list)
    for item, info in zip(items, data.infos, strict=True):
        by_hash[info.sha256].append(item.path)
    crossing = [p for p in by_hash.values() if len(p) > 1 and len({part_of[x] for x in p}) > 1]
    assert crossing, "a random split should separate some identical pairs"


def test_too_few_groups_is_a_clear_error():
    from lungct.errors import LungCTError

    with pytest.raises(LungCTError, match="too few"):
        make_split(["a", "b", "a"], ["g1", "g2", "g1"], 0.15, 0.15, seed=0)


def test_classes_too_small_for_the_folds_are_a_clear_error_not_sklearns(tmp_path, capsys):
    """Four images per class and 20% held out (5 folds): scikit-learn refuses with its own ValueError; lungct says
    what is wrong in one line, from `lungct train` too."""
    from lungct.cli import main
    from lungct.config import save_config
    from lungct.errors import LungCTError
    from tests.conftest import tiny_config, write_dataset

    labels = [c for c in "abc" for _ in range(4)]
    with pytest.raises(LungCTError, match=r"every class has fewer than 5 images \(largest: 4\)"):
        make_split(labels, [f"g{i}" for i in range(12)], 0.2, 0.2, seed=0)
    cfg = tiny_config(write_dataset(tmp_path / "data", per_class=4))
    cfg.split.mode = "random"
    save_config(cfg, tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every class has fewer than 5 images" in err[0]


def test_calibration_part_is_carved_from_training_by_whole_groups():
    from lungct.data.splits import SplitItem, tuning_part

    labels, groups = [], []
    for g in range(80):
        labels += [["a", "b"][g % 2]] * 5
        groups += [f"p{g}"] * 5
    without = make_split(labels, groups, 0.15, 0.15, seed=3)
    parts = make_split(labels, groups, 0.15, 0.15, seed=3, calib_fraction=0.15)
    assert without.count("calib") == 0
    # test and val are the same with or without a calibration part: it only takes training groups
    assert [p for p in parts if p in ("val", "test")] == [p for p in without if p in ("val", "test")]
    assert all(w == "train" for w, p in zip(without, parts, strict=True) if p == "calib")
    assert 0.08 < parts.count("calib") / len(parts) < 0.25
    by_group = defaultdict(set)
    for g, p in zip(groups, parts, strict=True):
        by_group[g].add(p)
    assert all(len(p) == 1 for p in by_group.values())
    items = [SplitItem(str(i), lab, g, p) for i, (lab, g, p) in enumerate(zip(labels, groups, parts, strict=True))]
    assert tuning_part(items) == "calib"
    assert tuning_part([i for i in items if i.part != "calib"]) == "val"


def test_calib_fraction_is_validated():
    from lungct.errors import LungCTError

    with pytest.raises(LungCTError, match=r"split\.calib_fraction: .*below 0\.5"):
        parse_config({"data": {"sources": [{"path": "x"}]}, "split": {"calib_fraction": 0.7}})


def test_a_class_smaller_than_the_folds_is_named_once_without_sklearns_warning(caplog, recwarn):
    """scikit-learn warned 'the least populated class in y has only 3 members' per call, naming no class."""
    import logging

    from lungct.data.splits import stratified_group_folds

    labels = np.array(["benign"] * 3 + ["normal"] * 20)
    groups = np.array([f"g{i}" for i in range(len(labels))])
    with caplog.at_level(logging.WARNING, logger="lungct"):
        folds = list(stratified_group_folds(labels, groups, 5, 0, "the test split"))
    assert len(folds) == 5 and [str(w.message) for w in recwarn] == []
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == "the test split: classes with fewer images than its 5 folds may miss some parts: benign (3)"
