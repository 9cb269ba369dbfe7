from pathlib import Path

import pytest

from lungct.config import DataConfig, SourceConfig
from lungct.data.scan import scan_samples
from lungct.data.sources import collect_samples
from lungct.errors import LungCTError
from tests.conftest import synthetic_slice, write_dataset


def _collect(*sources: SourceConfig, **kw):
    return collect_samples(DataConfig(sources=list(sources), **kw))


def test_class_folders_give_normalised_labels_in_slice_order(tiny_dataset):
    samples = _collect(SourceConfig(path=str(tiny_dataset)))
    assert {s.label for s in samples} == {"benign", "malignant", "normal"}
    benign = [Path(s.path).name for s in samples if s.label == "benign"]
    assert benign[:3] == ["Bengin case (1).png", "Bengin case (2).png", "Bengin case (3).png"]
    assert benign[9] == "Bengin case (10).png"  # natural order, not "(1)", "(10)", "(11)"


def test_merged_roots_with_include_and_aliases(tmp_path):
    a = write_dataset(tmp_path / "a", per_class=3)
    b = write_dataset(tmp_path / "b", per_class=4, folders=("Pneumonia",))
    samples = _collect(
        SourceConfig(path=str(a), include=["normal", "tumour"], aliases={"Malignant cases": "tumour"}),
        SourceConfig(path=str(b)),
    )
    counts = {label: sum(s.label == label for s in samples) for label in {s.label for s in samples}}
    assert counts == {"normal": 3, "tumour": 3, "pneumonia": 4}


def test_label_map_merges_classes(tiny_dataset):
    samples = _collect(SourceConfig(path=str(tiny_dataset)), label_map={"benign": "other", "normal": "other"})
    assert {s.label for s in samples} == {"malignant", "other"}


def test_presplit_layout_keeps_parts(tmp_path):
    for part in ("train", "valid", "test"):
        write_dataset(
            tmp_path / "ds" / part, per_class=2, folders=("adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib", "normal")
        )
    samples = _collect(SourceConfig(path=str(tmp_path / "ds")))
    assert {s.preset_part for s in samples} == {"train", "val", "test"}
    assert {s.label for s in samples} == {"adenocarcinoma", "normal"}


def test_manifest_with_groups(tmp_path):
    for i in range(4):
        synthetic_slice(i % 2, i).save(tmp_path / f"img{i}.png")
    (tmp_path / "m.csv").write_text(
        "path,label,group\nimg0.png,Bengin cases,p1\nimg1.png,malignant,p1\nimg2.png,normal,p2\nimg3.png,normal,\n"
    )
    samples = _collect(SourceConfig(path=str(tmp_path / "m.csv")))
    assert [s.label for s in samples] == ["benign", "malignant", "normal", "normal"]
    assert samples[0].group == samples[1].group != samples[2].group
    assert samples[3].group is None
    assert Path(samples[0].path).is_absolute()


def test_manifest_missing_column_is_reported(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.png,normal\n")
    with pytest.raises(LungCTError, match="lacks column"):
        _collect(SourceConfig(path=str(tmp_path / "m.csv")))


def test_missing_root_is_reported(tmp_path):
    with pytest.raises(LungCTError, match="not found"):
        _collect(SourceConfig(path=str(tmp_path / "nope")))


def test_corrupt_and_empty_files_are_skipped_with_reasons(tiny_dataset):
    folder = tiny_dataset / "Normal cases"
    (folder / "Normal case (100).jpg").write_bytes(b"")
    (folder / "Normal case (101).png").write_bytes(b"this is not an image at all")
    good = (folder / "Normal case (1).png").read_bytes()
    (folder / "Normal case (102).png").write_bytes(good[: len(good) // 2])  # truncated
    samples = _collect(SourceConfig(path=str(tiny_dataset)))
    result = scan_samples(samples, progress=False)
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert reasons["Normal case (100).jpg"] == "empty file"
    assert "not a readable image" in reasons["Normal case (101).png"]
    assert "corrupt or truncated" in reasons["Normal case (102).png"]
    assert len(result.samples) == len(samples) - 3 == 36


def _groups_source(root: Path, text: str | bytes) -> SourceConfig:
    """The tiny dataset with a groups CSV beside it (as the pneumonia set's metadata.csv names source articles)."""
    path = root / "groups.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return SourceConfig(path=str(root), groups={"csv": "groups.csv", "path_column": "file", "group_column": "who"})


def test_a_groups_file_names_each_files_group_with_any_spreadsheet_delimiter(tiny_dataset):
    files = sorted(str(p.relative_to(tiny_dataset)) for p in tiny_dataset.rglob("*.png"))
    for sep, bom in ((",", ""), (";", "\ufeff"), ("\t", "")):
        rows = "".join(f"{f}{sep}patient {i % 4}\n" for i, f in enumerate(files))
        samples = _collect(_groups_source(tiny_dataset, f"{bom}file{sep}who\n{rows}"))
        assert {s.group for s in samples} == {f"{tiny_dataset.name}:patient {k}" for k in range(4)}, repr(sep)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # a short row was a traceback
        ("file,who\nBengin cases/Bengin case (1).png\n", r"groups\.csv line 2: fewer cells than the header names"),
        ("file,patient\nx.png,1\n", r"groups\.csv needs columns 'file' and 'who'"),
        ("", r"groups\.csv needs columns 'file' and 'who'"),
        (b"file,who\nx.png,M\xfcller\n", r"groups file .*groups\.csv is not UTF-8 text"),
    ],
    ids=["short-row", "wrong-columns", "empty", "latin-1"],
)
def test_a_bad_groups_file_is_one_clear_error(tiny_dataset, text, message):
    with pytest.raises(LungCTError, match=message):
        _collect(_groups_source(tiny_dataset, text))
