"""The audit must find crafted duplicates, leaks in a leaky split and a size that encodes the label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lungct.audit import run_audit
from lungct.cli import main
from lungct.data.splits import SplitItem, save_split
from tests.conftest import IQ_OTH, needs_shared


def blob_image(seed: int, size: int = 128) -> Image.Image:
    """A smooth grey picture (a few Gaussian blobs): distinct per seed, stable under a small shift."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(float)
    img = np.zeros((size, size))
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        r = rng.uniform(0.05, 0.15) * size
        img += rng.uniform(80, 200) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L")


def write_blobs(root: Path, classes: dict[str, int], seed0: int = 0, sizes: dict[str, int] | None = None) -> Path:
    seed = seed0
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = blob_image(seed)
            if sizes:
                img = img.resize((sizes[cls], sizes[cls]))
            img.save(root / cls / f"{cls} ({i + 1}).png")
            seed += 1
    return root


@pytest.fixture
def crafted(tmp_path: Path) -> Path:
    """Six distinct images per class, plus an identical copy, a re-encoded JPEG and a 2-px shifted copy."""
    root = write_blobs(tmp_path / "data", {"benign": 6, "malignant": 6})
    original = root / "benign" / "benign (1).png"
    shutil.copy(original, root / "malignant" / "copy identical.png")
    Image.open(original).save(root / "benign" / "reencoded.jpg", quality=80)
    arr = np.asarray(Image.open(root / "benign" / "benign (4).png"))
    Image.fromarray(np.roll(arr, (2, 2), axis=(0, 1))).save(root / "malignant" / "shifted.png")
    return root


def _groups(audit: dict, kind: str) -> list[set[str]]:
    return [{Path(p).name for p in d["paths"]} for d in audit["duplicates"] if d["kind"] == kind]


def test_finds_identical_reencoded_and_shifted_copies(crafted, tmp_path):
    audit = run_audit([crafted], tmp_path / "audit", progress=False)
    assert _groups(audit, "exact") == [{"benign (1).png", "copy identical.png"}]
    near = _groups(audit, "near")
    assert {"benign (1).png", "copy identical.png", "reencoded.jpg"} in near
    assert {"benign (4).png", "shifted.png"} in near
    assert len(near) == 2, near  # the other, distinct images are not called duplicates
    assert all(d["cross_class"] for d in audit["duplicates"] if "copy identical.png" in str(d["paths"]))
    assert audit["leaks"] == [] and audit["split"] is None
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["duplicate_summary"]["exact_pairs"] == 1
    assert "Duplicates" in (tmp_path / "audit" / "audit.md").read_text()


def _split(paths: list[Path], part_of) -> list[SplitItem]:
    return [SplitItem(str(p.resolve()), p.parent.name, f"i{k}", part_of(p)) for k, p in enumerate(paths)]


def test_leaky_split_is_reported_and_clean_split_is_not(crafted, tmp_path):
    paths = sorted(crafted.rglob("*.*"))
    # Leaky: the shifted copy is tested while its original is trained on.
    leaky = _split(paths, lambda p: "test" if p.name == "shifted.png" else "train")
    save_split(leaky, tmp_path / "leaky.csv")
    audit = run_audit([crafted], tmp_path / "a1", split=tmp_path / "leaky.csv", progress=False)
    near_leaks = [lk for lk in audit["leaks"] if lk["kind"] == "near_duplicate"]
    assert any({Path(p).name for p in lk["paths"]} == {"benign (4).png", "shifted.png"} for lk in near_leaks)
    assert audit["split"]["audited_in_split"] == len(paths)

    # Clean: every image in train except one distinct image, which has no twin, in test.
    clean = _split(paths, lambda p: "test" if p.name == "malignant (6).png" else "train")
    save_split(clean, tmp_path / "clean.csv")
    groups = run_audit([crafted], tmp_path / "a0", progress=False)["lookalike_groups"]["group_of"]
    alone = [p for p, g in groups.items() if list(groups.values()).count(g) == 1]
    assert str((crafted / "malignant" / "malignant (6).png").resolve()) in alone
    audit = run_audit([crafted], tmp_path / "a2", split=tmp_path / "clean.csv", progress=False)
    assert audit["leaks"] == []


def test_a_split_group_crossing_parts_is_a_leak(crafted, tmp_path):
    paths = sorted(crafted.rglob("*.*"))
    items = [SplitItem(str(p.resolve()), p.parent.name, "same", "train") for p in paths]
    items[-1] = SplitItem(items[-1].path, items[-1].label, "same", "val")
    save_split(items, tmp_path / "split.csv")
    audit = run_audit([crafted], tmp_path / "a", split=tmp_path / "split.csv", progress=False)
    assert [lk["kind"] for lk in audit["leaks"]].count("split_group") == 1


def test_size_that_encodes_the_label_is_a_shortcut(tmp_path):
    data = write_blobs(tmp_path / "sized", {"benign": 5, "malignant": 5}, sizes={"benign": 64, "malignant": 80})
    audit = run_audit([data], tmp_path / "a", progress=False)
    sizes = {(s["value"], s["classes"][0], s["count"]) for s in audit["shortcuts"] if s["property"] == "image_size"}
    assert sizes == {("64x64", "benign", 5), ("80x80", "malignant", 5)}
    assert audit["properties"]["image_size"]["label_accuracy_from_property"] == 1.0

    same = write_blobs(tmp_path / "same", {"benign": 5, "malignant": 5}, seed0=50)
    audit = run_audit([same], tmp_path / "b", progress=False)
    assert not [s for s in audit["shortcuts"] if s["property"] in ("image_size", "mode", "format")]
    assert audit["counts"]["imbalance_ratio"] == 1.0


def test_merged_sources_that_differ_are_flagged(tmp_path):
    a = write_blobs(tmp_path / "a", {"benign": 5}, sizes={"benign": 64})
    b = write_blobs(tmp_path / "b", {"malignant": 5}, seed0=20, sizes={"malignant": 96})
    audit = run_audit([a, b], tmp_path / "out", progress=False)
    assert {"source", "image_size"} <= {s["property"] for s in audit["shortcuts"]}
    assert any(d["property"] == "image_size" for d in audit["source_differences"])


def test_cli_audit_bad_split_is_one_line(crafted, tmp_path, capsys):
    bad = tmp_path / "run"
    bad.mkdir()
    code = main(["audit", str(crafted), "--split", str(bad), "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "split file not found" in err and len(err.strip().splitlines()) == 1


@needs_shared
@pytest.mark.realdata
def test_iqothnccd_audit(tmp_path):
    audit = run_audit([IQ_OTH], tmp_path, progress=False)
    assert audit["duplicate_summary"]["exact_pairs"] == 25
    malignant_sizes = {s["value"] for s in audit["shortcuts"] if s["property"] == "image_size"}
    assert {"623x512", "801x512"} <= malignant_sizes
    assert all(s["classes"] == ["malignant"] for s in audit["shortcuts"] if s["value"] in ("623x512", "801x512"))
    # the air, table and border alone tell the classes of unseen groups apart (docs/model-quality.md, session 22)
    assert audit["background"]["flagged"] and audit["background"]["balanced_accuracy"] > 0.5


@pytest.mark.parametrize(
    "content",
    [b"foo,bar\n1,2\n", b"hello, I am text\n", b"\xff\xfe\x00 binary", b""],
    ids=["other-columns", "text", "binary", "empty"],
)
def test_cli_audit_split_that_is_not_a_split_file_is_one_line(crafted, tmp_path, capsys, content):
    """Other columns used to end in a KeyError traceback; a text file passed silently as a split with no leaks."""
    bad = tmp_path / "split.png"
    bad.write_bytes(content)
    code = main(["audit", str(crafted), "--split", str(bad), "--out", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{bad} is not a split file: it needs the columns path,label,group,part" in err


def test_with_hu_offset_the_audit_reads_16bit_files_as_training_does(tmp_path, capsys):
    """The audit judges the pixels the model will see: a file another export wrote (another offset) is skipped with
    training's reason, where a stretch would have read it as any other slice."""
    from tests.conftest import CLASS_FOLDERS
    from tests.data.test_hu_images import chest_hu, save_uint16

    data = tmp_path / "data"
    for k, folder in enumerate(CLASS_FOLDERS[:2]):
        (data / folder).mkdir(parents=True)
        for i in range(4):
            save_uint16(chest_hu(seed=10 * k + i), data / folder / f"{i}.png")
    save_uint16(chest_hu(seed=99), data / CLASS_FOLDERS[0] / "other export.png", offset=32768)
    plain = run_audit([data], tmp_path / "plain", progress=False, background=False)
    assert plain["skipped"] == [] and plain["hu_offset"] is None
    argv = ["audit", "--out", str(tmp_path / "hu"), "--hu-offset", "1024", "--no-background", "-q", str(data)]
    assert main(argv) == 0
    audit = json.loads((tmp_path / "hu" / "audit.json").read_text())
    assert audit["hu_offset"] == 1024 and audit["counts"]["total"] == 8
    (skipped,) = audit["skipped"]
    assert skipped["path"].endswith("other export.png") and "check the data's hu_offset" in skipped["reason"]
    assert "read as HU + 1024" in (tmp_path / "hu" / "audit.md").read_text()
    assert main(["audit", "--out", str(tmp_path / "x"), "--hu-offset", "70000", str(data)]) == 2
    assert "--hu-offset" in capsys.readouterr().err
