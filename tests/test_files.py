"""lungct.files: output folders are checked before the slow part of a command, crash-safe writes."""

from __future__ import annotations

import pytest

from lungct.errors import LungCTError
from lungct.files import atomic_write, output_folder


def test_output_folder_creates_missing_parents(tmp_path):
    made = output_folder(tmp_path / "a" / "b")
    assert made.is_dir() and list(made.iterdir()) == []  # the write probe leaves nothing behind


@pytest.mark.parametrize(
    ("where", "reason"),
    [("file", "exists and is not a folder"), ("file/below", "Not a directory")],
)
def test_output_folder_in_the_way_of_a_file_is_one_clear_error(tmp_path, where, reason):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LungCTError, match=f"--out {tmp_path / where} cannot be used: {reason}"):
        output_folder(tmp_path / where, "--out")


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(target, b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
