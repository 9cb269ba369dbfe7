"""The background check: the label predicted from the pixels outside the body alone, on unseen groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from lungct.audit import run_audit
from lungct.audit.background import background_check, background_features
from lungct.cli import main
from lungct.data.field import body_hull

SIDE = 96


def slice_image(rng: np.random.Generator, speckle: bool, nodule: bool) -> Image.Image:
    """A body (a noisy bright disc) on black; `speckle`: faint noise in the air around it (an acquisition trait,
    kept below the tissue level); `nodule`: a bright spot inside the body (anatomy)."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    ry, rx = rng.uniform(16, 36, 2)
    cy, cx = SIDE / 2 + rng.uniform(-10, 10, 2)
    body = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    img = np.zeros((SIDE, SIDE))
    img[body] = rng.normal(120, 30, body.sum())
    if speckle:
        air = ~body & (rng.random((SIDE, SIDE)) < 0.3)
        img[air] = rng.uniform(4, 14, air.sum())
    if nodule:
        spot = (yy - cy - rng.uniform(-8, 8)) ** 2 + (xx - cx - rng.uniform(-8, 8)) ** 2 < 16
        img[spot] = 250
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_set(root: Path, trait_of: dict[str, dict], groups_per_class: int = 12, per_group: int = 3, seed: int = 0):
    """Class folders of PNG slices and a manifest naming their groups (root/manifest.csv); (paths, labels, groups)."""
    rng = np.random.default_rng(seed)
    paths, labels, groups = [], [], []
    for cls, traits in trait_of.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for g in range(groups_per_class):
            for k in range(per_group):
                path = root / cls / f"{cls}_{g}_{k}.png"
                slice_image(rng, **traits).save(path)
                paths.append(str(path))
                labels.append(cls)
                groups.append(f"{cls}{g}")
    rows = [f"{Path(p).relative_to(root)},{y},{g}" for p, y, g in zip(paths, labels, groups, strict=True)]
    (root / "manifest.csv").write_text("path,label,group\n" + "\n".join(rows) + "\n")
    return paths, labels, groups


def test_hull_covers_the_body_and_leaves_the_air():
    img = slice_image(np.random.default_rng(1), speckle=True, nodule=True)
    hull = body_hull(img)
    grey = np.asarray(img)
    assert hull[SIDE // 2, SIDE // 2] and not hull[0, 0] and not hull[-1, -1]
    assert (grey[hull] > 20).mean() > 0.8  # the hull is mostly body
    assert (grey[~hull] < 20).all()  # nothing outside it is tissue


def test_features_do_not_see_inside_the_body():
    rng = np.random.default_rng(2)
    img = slice_image(rng, speckle=False, nodule=False)
    hull = body_hull(img)
    changed = np.asarray(img).copy()
    changed[hull] = 250  # anything inside the body
    assert np.allclose(background_features(img), background_features(Image.fromarray(changed)), atol=0.02)


def test_a_trait_of_the_air_that_follows_the_label_is_flagged(tmp_path):
    paths, labels, groups = write_set(
        tmp_path, {"benign": {"speckle": True, "nodule": False}, "normal": {"speckle": False, "nodule": False}}
    )
    result = background_check(paths, labels, groups)
    assert result["ran"] and result["flagged"]
    assert result["balanced_accuracy"] > 0.9 and result["chance"] == 0.5


def test_a_difference_inside_the_body_only_is_not_flagged(tmp_path):
    paths, labels, groups = write_set(
        tmp_path, {"benign": {"speckle": True, "nodule": True}, "normal": {"speckle": True, "nodule": False}}
    )
    result = background_check(paths, labels, groups)
    assert result["ran"] and not result["flagged"]
    assert result["balanced_accuracy"] < 0.65


def test_too_few_groups_or_one_class_is_reported_not_raised(tmp_path):
    paths, labels, groups = write_set(
        tmp_path, {"benign": {"speckle": True, "nodule": False}, "normal": {"speckle": False, "nodule": False}}, 2, 2
    )
    few = background_check(paths, labels, groups)
    assert not few["ran"] and "groups" in few["reason"]
    one = background_check(paths[:4], labels[:4], groups[:4])
    assert not one["ran"] and "two classes" in one["reason"]


def test_audit_reports_it_and_can_skip_it(tmp_path):
    write_set(
        tmp_path / "data", {"benign": {"speckle": True, "nodule": False}, "normal": {"speckle": False, "nodule": False}}
    )
    audit = run_audit([tmp_path / "data" / "manifest.csv"], tmp_path / "out", progress=False)
    assert audit["lookalike_groups"]["n_groups"] >= 5
    assert audit["background"]["flagged"]
    assert "The label shows outside the body" in (tmp_path / "out" / "audit.md").read_text()
    skipped = run_audit([tmp_path / "data" / "manifest.csv"], tmp_path / "out2", progress=False, background=False)
    assert not skipped["background"]["ran"]
    assert "Not run: not asked for" in (tmp_path / "out2" / "audit.md").read_text()


def test_cli_prints_the_flag_and_no_background_skips_it(tmp_path, capsys):
    write_set(
        tmp_path / "data", {"benign": {"speckle": True, "nodule": False}, "normal": {"speckle": False, "nodule": False}}
    )
    manifest = str(tmp_path / "data" / "manifest.csv")
    assert main(["audit", manifest, "--out", str(tmp_path / "a"), "-q"]) == 0
    assert "the label shows outside the body" in capsys.readouterr().out
    assert main(["audit", manifest, "--out", str(tmp_path / "b"), "-q", "--no-background"]) == 0
    assert "outside the body" not in capsys.readouterr().out
    assert not json.loads((tmp_path / "b" / "audit.json").read_text())["background"]["ran"]
