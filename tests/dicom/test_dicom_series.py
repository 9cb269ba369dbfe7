"""Series from a folder or zip come back in slice order, checked; study scores aggregate slices."""

from __future__ import annotations

import random
import zipfile

import numpy as np
import pytest

from lungct.dicom import DicomError, load_series, read_hu, to_hu
from lungct.errors import LungCTError
from lungct.inference.study import aggregate
from tests.dicom.dicom_factory import ct_dataset, write

N = 7


def _shuffled_series(folder, orientation=(1, 0, 0, 0, 1, 0), axis=2, positions=True, seed=3):
    """Slice k has uniform HU -1000 + 100k and lies at 5k mm along `axis`; files and instances are shuffled."""
    names = list(range(N))
    random.Random(seed).shuffle(names)
    instances = list(range(1, N + 1)) if not positions else random.Random(seed + 1).sample(range(1, N + 1), N)
    for k in range(N):
        pos = [0.0, 0.0, 0.0]
        pos[axis] = 5.0 * k
        ds = ct_dataset(
            np.full((4, 4), -1000.0 + 100 * k),
            position=tuple(pos) if positions else None,
            orientation=orientation,
            instance=instances[k],
        )
        write(ds, folder / f"file_{names[k]}.dcm")
    return folder


def _levels(series) -> list[float]:
    return [float(to_hu(s.dataset).mean()) for s in series.slices]


def test_shuffled_folder_comes_back_in_slice_order(tmp_path):
    series = load_series(_shuffled_series(tmp_path / "s"))
    assert series.order == "position"
    assert _levels(series) == [-1000.0 + 100 * k for k in range(N)]
    assert [s.position for s in series.slices] == [5.0 * k for k in range(N)]


def test_order_follows_the_slice_normal_not_z(tmp_path):
    # Coronal slices: rows along x, columns along -z, so the normal is y.
    series = load_series(_shuffled_series(tmp_path / "s", orientation=(1, 0, 0, 0, 0, -1), axis=1))
    assert _levels(series) == [-1000.0 + 100 * k for k in range(N)]


def test_instance_number_is_the_fallback(tmp_path):
    series = load_series(_shuffled_series(tmp_path / "s", positions=False))
    assert series.order == "instance"
    assert _levels(series) == [-1000.0 + 100 * k for k in range(N)]


@pytest.mark.parametrize("damage", [b"x\\y\\z", b"1\\2"], ids=["not-numbers", "two-values"])
def test_a_damaged_slice_position_falls_back_to_instance_numbers(tmp_path, damage):
    """A series with one unreadable ImagePositionPatient failed with a ValueError, and the DICOM node tried it
    again at every start, for ever."""
    import pydicom

    folder = _shuffled_series(tmp_path / "s")
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds["ImagePositionPatient"] = pydicom.dataelem.RawDataElement(
        pydicom.tag.Tag("ImagePositionPatient"), "DS", len(damage), damage, 0, False, True
    )
    ds.save_as(first)
    series = load_series(folder)
    assert series.order == "instance"
    assert sorted(s.instance for s in series.slices) == [s.instance for s in series.slices]


def test_zip_of_a_series(tmp_path):
    folder = _shuffled_series(tmp_path / "s")
    (folder / "README.txt").write_text("not dicom")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.iterdir(), reverse=True):
            zf.write(f, f"export/{f.name}")
    series = load_series(archive)
    assert _levels(series) == [-1000.0 + 100 * k for k in range(N)]
    assert series.skipped == ["README.txt"]
    assert read_hu(folder / "file_0.dcm", "x").shape == (4, 4)


def test_two_series_are_inconsistent(tmp_path):
    folder = _shuffled_series(tmp_path / "s")
    write(ct_dataset(np.zeros((4, 4)), series_uid="1.2.3.4"), folder / "other.dcm")
    with pytest.raises(DicomError, match="inconsistent series: the files belong to 2 different series"):
        load_series(folder)


def test_different_sizes_are_inconsistent(tmp_path):
    folder = _shuffled_series(tmp_path / "s")
    write(ct_dataset(np.zeros((8, 8)), position=(0, 0, 99)), folder / "big.dcm")
    with pytest.raises(DicomError, match=r"different sizes \(4x4, 8x8\)"):
        load_series(folder)


def test_different_orientation_is_inconsistent(tmp_path):
    folder = _shuffled_series(tmp_path / "s")
    write(ct_dataset(np.zeros((4, 4)), orientation=(0, 1, 0, 0, 0, -1)), folder / "tilted.dcm")
    with pytest.raises(DicomError, match=r"tilted\.dcm has a different orientation"):
        load_series(folder)


def test_empty_and_non_dicom_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="no DICOM slices found"):
        load_series(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DicomError, match="not a folder or a zip file"):
        load_series(tmp_path / "x.txt")


def test_aggregates_name_the_slices_that_drove_them():
    scores = np.array([0.1, 0.9, 0.2, 0.7, 0.3])
    assert aggregate(scores, "max") == (0.9, [1])
    score, drivers = aggregate(scores, "mean", 2)
    assert score == pytest.approx(0.44) and drivers == [1, 3]
    score, drivers = aggregate(scores, "topk", 3)
    assert score == pytest.approx((0.9 + 0.7 + 0.3) / 3) and drivers == [1, 3, 4]
    assert aggregate(scores, "topk", 10)[1] == [1, 3, 4, 2, 0]
    with pytest.raises(LungCTError, match="unknown aggregate"):
        aggregate(scores, "median")
