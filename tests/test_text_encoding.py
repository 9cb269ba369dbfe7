"""Text files are UTF-8 whatever the machine's locale: a run trained and evaluated under an ASCII locale (LC_ALL=C
with Python's UTF-8 mode and locale coercion off, as on a minimal container or a server set up that way) keeps
non-ASCII image paths, and the manifests spreadsheets write (a byte-order mark, semicolons) read as they are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import tiny_config, write_dataset

ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def _lungct(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **ASCII_LOCALE}
    command = [sys.executable, "-m", "lungct", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cross_validation_under_an_ascii_locale_writes_utf8_and_finishes(tmp_path, fake_pretrained):
    """cv.md's "mean ± sd" row was written in the locale's encoding: under ASCII, after every fold had trained, cv
    ended in a UnicodeEncodeError (and reading a config with one non-ASCII character failed at the start)."""
    check = [sys.executable, "-c", "import locale; print(locale.getpreferredencoding(False))"]
    encoding = subprocess.run(check, env={**os.environ, **ASCII_LOCALE}, capture_output=True, text=True).stdout
    assert "UTF" not in encoding.upper(), encoding  # the locale really is not UTF-8, or the test proves nothing

    data = write_dataset(tmp_path / "data", per_class=12)  # ASCII paths: an ASCII locale cannot name others at all
    cfg = tiny_config(data, fake_pretrained).model_dump(mode="json")
    cfg["name"] = "tiny – données"
    cfg["train"]["phase1"]["epochs"] = 1
    cfg["train"]["phase2"]["epochs"] = 0
    config = tmp_path / "c.yaml"
    config.write_text("# Zürich\n" + yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")

    done = _lungct("cv", "--config", config, "--folds", "2", "--out", tmp_path / "cv", "--no-track", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mean ± sd: accuracy=" in done.stdout  # click writes UTF-8 where the locale says ASCII
    assert "| mean ± sd |" in (tmp_path / "cv" / "cv.md").read_text(encoding="utf-8")


def test_manifests_from_spreadsheets_read_as_they_are(tmp_path):
    from lungct.data.sources import read_manifest

    data = write_dataset(tmp_path / "data", per_class=2)
    images = sorted(data.rglob("*.png"))
    for name, text in {
        "bom.csv": "\ufeffpath,label\n" + "".join(f"{p},{p.parent.name}\n" for p in images),  # Excel "CSV UTF-8"
        "semicolon.csv": "path;label\n" + "".join(f"{p};{p.parent.name}\n" for p in images),  # decimal-comma locales
        "tab.csv": "path\tlabel\n" + "".join(f"{p}\t{p.parent.name}\n" for p in images),
    }.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        samples = read_manifest(tmp_path / name, {})
        assert [Path(s.path) for s in samples] == images, name
        assert {s.label for s in samples} == {"benign", "malignant", "normal"}, name
