"""What the data layer lets through to a split: each image once, in one part and with one label; file names that
text can hold; no lungct output taken for data; seeds every library takes. Each refusal is one clear line."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from lungct.config import SEED_MAX, DataConfig, SourceConfig, parse_config, save_config
from lungct.data.prepare import prepare_data, split_items
from lungct.data.scan import NOT_UTF8, scan_samples
from lungct.data.sources import collect_samples
from lungct.data.splits import load_split, make_split, save_split
from lungct.errors import LungCTError
from tests.conftest import synthetic_slice, tiny_config, write_dataset


def _collect(path: Path) -> list:
    return collect_samples(DataConfig(sources=[SourceConfig(path=str(path))]))


# -- split files (train --split-file, and every command that reads a run's split.csv) ----------------------------


def _split_file(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    """A split.csv of (image name, part) rows, the images written under tmp_path."""
    lines = ["path,label,group,part"]
    for k, (name, part) in enumerate(rows):
        image = tmp_path / name
        if not image.exists():
            synthetic_slice(k % 3, k).save(image)
        lines.append(f"{image},normal,g{k},{part}")
    path = tmp_path / "split.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_split_listing_one_image_in_two_parts_is_refused_naming_it_and_its_parts(tmp_path):
    """The image would be trained on and then scored as unseen: `train --split-file` trained on such a split."""
    from lungct.pipeline.split import read_split_file

    path = _split_file(tmp_path, [("a.png", "train"), ("b.png", "val"), ("c.png", "test"), ("a.png", "test")])
    for read in (load_split, read_split_file):
        with pytest.raises(LungCTError) as exc:
            read(path)
        message = str(exc.value)
        assert "\n" not in message
        assert f"lines 2 and 5 list {tmp_path / 'a.png'} in both train and test" in message
        assert str(path) in message


def test_a_split_listing_one_image_twice_in_one_part_is_refused(tmp_path):
    path = _split_file(tmp_path, [("a.png", "train"), ("b.png", "test"), ("a.png", "train"), ("b.png", "test")])
    with pytest.raises(LungCTError, match=r"lines 2 and 4 list .*a\.png twice in train \(1 more repeated rows\)"):
        load_split(path)


def test_a_split_of_distinct_images_reads_as_written(tmp_path):
    path = _split_file(tmp_path, [("a.png", "train"), ("b.png", "val"), ("c.png", "test")])
    assert [(Path(i.path).name, i.part) for i in load_split(path)] == [
        ("a.png", "train"),
        ("b.png", "val"),
        ("c.png", "test"),
    ]


# -- manifests -----------------------------------------------------------------------------------------------------


def _manifest(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    for k in range(4):
        synthetic_slice(k % 3, k).save(tmp_path / f"img{k}.png")
    path = tmp_path / "m.csv"
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows), encoding="utf-8")
    return path


def test_a_manifest_listing_a_file_twice_is_refused_with_its_lines(tmp_path):
    """Each row was a sample: a random split put 18 of 36 doubled files in two parts."""
    path = _manifest(tmp_path, [("img0.png", "benign"), ("img1.png", "normal"), ("./img0.png", "Bengin cases")])
    with pytest.raises(LungCTError) as exc:
        _collect(path)
    message = str(exc.value)
    assert message == (
        f"manifest {path} lines 2 and 4 list {(tmp_path / 'img0.png').resolve()} twice; list each image once"
    )  # "Bengin cases" is benign: the same label, so no labels named


def test_a_manifest_giving_a_file_two_labels_names_both(tmp_path):
    """evaluate --data scored the image against two truths."""
    path = _manifest(
        tmp_path,
        [("img0.png", "benign"), ("img1.png", "normal"), ("img2.png", "normal"), ("img0.png", "normal")],
    )
    with pytest.raises(
        LungCTError, match=r"lines 2 and 5 list .*img0\.png twice with two labels, 'benign' and 'normal'"
    ):
        _collect(path)


# -- file names that are not UTF-8 ---------------------------------------------------------------------------------


def _with_undecodable_names(root: Path) -> list[str]:
    """The tiny dataset with two files renamed to bytes that are not UTF-8 (as copied from an old Latin-1 system)."""
    write_dataset(root)
    renamed = []
    for folder, old, new in (
        ("Bengin cases", "Bengin case (1).png", b"Bengin \xe9 (1).png"),
        ("Normal cases", "Normal case (1).png", b"Normal \xff case (1).png"),
    ):
        target = os.fsencode(root / folder) + b"/" + new
        os.rename(root / folder / old, target)
        renamed.append(f"{root / folder}/{new.decode('utf-8', 'backslashreplace')}")
    return renamed


@pytest.mark.parametrize("cache", [True, False])
def test_a_file_name_that_is_not_utf8_is_skipped_with_its_reason(tmp_path, cache):
    """Such a name crashed the scan cache's lookup (and, without the cache, the writing of split.csv) with a
    UnicodeEncodeError traceback."""
    renamed = _with_undecodable_names(tmp_path / "data")
    result = scan_samples(_collect(tmp_path / "data"), progress=False, cache=cache)
    assert sorted((s.path, s.reason) for s in result.skipped) == sorted((p, NOT_UTF8) for p in renamed)
    assert len(result.samples) == 34
    assert all(s.path.encode("utf-8") for s in result.samples)


def test_split_and_audit_finish_on_names_that_are_not_utf8(tmp_path, capsys, caplog):
    from lungct.cli import main

    renamed = _with_undecodable_names(tmp_path / "data")
    save_config(tiny_config(tmp_path / "data"), tmp_path / "c.yaml")
    with caplog.at_level(logging.WARNING, logger="lungct"):
        assert main(["split", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "split.csv"), "-q"]) == 0
    assert len(load_split(tmp_path / "split.csv")) == 34
    messages = {r.getMessage() for r in caplog.records}
    assert {f"skipped {p}: {NOT_UTF8}" for p in renamed} <= messages
    out = tmp_path / "audit"
    assert main(["audit", str(tmp_path / "data"), "--out", str(out), "-q", "--no-background"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert NOT_UTF8 in (out / "audit.json").read_text(encoding="utf-8")


# -- lungct's own outputs inside the data --------------------------------------------------------------------------


def test_lungct_output_folders_inside_the_data_are_not_classes_or_slices(tmp_path, caplog):
    """A train --out inside the data became a class (its curves.png the one image); an evaluate --out inside a
    class folder added its confusion_matrix.png and roc.png as slices."""
    data = write_dataset(tmp_path / "data")
    run = data / "myrun"
    run.mkdir()
    (run / "model.json").write_text("{}", encoding="utf-8")
    synthetic_slice(0, 99).save(run / "curves.png")
    report = data / "Normal cases" / "eval"
    (report / "deeper").mkdir(parents=True)
    (report / "metrics.json").write_text("{}", encoding="utf-8")
    for name in ("confusion_matrix.png", "roc.png", "deeper/more.png"):
        synthetic_slice(1, 98).save(report / name)
    plain = data / "Normal cases" / "more slices"  # a plain sub-folder of a class still holds data
    plain.mkdir()
    synthetic_slice(2, 97).save(plain / "Normal case (13).png")

    with caplog.at_level(logging.WARNING, logger="lungct"):
        samples = _collect(data)
    assert {s.label for s in samples} == {"benign", "malignant", "normal"}
    assert len(samples) == 37
    assert not any("/eval/" in s.path or "/myrun/" in s.path for s in samples)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped folder")]
    assert skipped == [
        f"skipped folder {run}: it holds model.json, a lungct output, not data",
        f"skipped folder {report}: it holds metrics.json, a lungct output, not data",
    ]


def test_a_run_folder_beside_split_folders_leaves_the_layout_pre_split(tmp_path):
    for part in ("train", "test"):
        write_dataset(tmp_path / "ds" / part, per_class=2, folders=("normal", "tumour"))
    (tmp_path / "ds" / "run").mkdir()
    (tmp_path / "ds" / "run" / "summary.json").write_text("{}", encoding="utf-8")
    samples = _collect(tmp_path / "ds")
    assert {s.preset_part for s in samples} == {"train", "test"} and len(samples) == 8


# -- seeds ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"seed": 10**23}, "seed"),
        ({"train": {"seed": -3}}, "train.seed"),
    ],
)
def test_a_seed_out_of_range_is_a_config_error(raw, where):
    """The split's scikit-learn refused it with a traceback after the whole data scan."""
    with pytest.raises(LungCTError, match=rf"^config: {where}: .*must be between 0 and {SEED_MAX}"):
        parse_config(raw)


def test_the_largest_seed_splits_and_one_set_in_code_out_of_range_is_one_clear_error(tmp_path):
    cfg = tiny_config(write_dataset(tmp_path / "data"))
    cfg.seed = SEED_MAX  # valid: the split's further draws (seed + 1, seed + 2) must stay in range too
    cfg.split.calib_fraction = 0.1
    items = split_items(prepare_data(cfg, progress=False), cfg)
    assert {i.part for i in items} == {"train", "val", "calib", "test"}
    save_split(items, tmp_path / "split.csv")
    labels = [c for c in "abc" for _ in range(12)]
    with pytest.raises(LungCTError, match=rf"^seed -1 is out of range: it must be between 0 and {SEED_MAX}$"):
        make_split(labels, [f"g{i}" for i in range(36)], 0.2, 0.2, seed=-1)  # as `train --seed -1` sets it


def test_an_image_reached_twice_across_sources_or_by_a_link_is_refused(tmp_path):
    """`--data D --data D`, overlapping sources or a symlink doubled images, and a split could then put one
    image's two copies in two parts."""
    data = write_dataset(tmp_path / "data", per_class=3)
    twice = DataConfig(sources=[SourceConfig(path=str(data)), SourceConfig(path=str(data))])
    with pytest.raises(LungCTError, match=r"is read twice \(data: data\): a source given twice"):
        collect_samples(twice)
    normal = data / "Normal cases"
    target = sorted(normal.glob("*.png"))[0]
    (data / "Bengin cases" / "linked.png").symlink_to(target)
    with pytest.raises(LungCTError, match=re.escape(f"{target} is read twice")):
        collect_samples(DataConfig(sources=[SourceConfig(path=str(data))]))
    (data / "Bengin cases" / "linked.png").unlink()
    assert len(collect_samples(DataConfig(sources=[SourceConfig(path=str(data))]))) == 9
