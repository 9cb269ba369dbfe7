"""16-bit and float image files that store Hounsfield units: the data's `hu_offset` windows them like DICOM.

Without it such a file is stretched from its darkest to its brightest pixel, and a CT export then reaches the model
with another contrast than the lung-window slices it was trained on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lungct.cli import main
from lungct.config import parse_config
from lungct.data.images import ImageReadError, load_image
from lungct.data.preprocess import Preprocess
from lungct.dicom.hounsfield import LUNG, STACK3
from lungct.errors import LungCTError
from lungct.run import RunDir
from lungct.training import train
from tests.conftest import CLASS_FOLDERS, synthetic_slice, tiny_config
from tests.dicom.dicom_factory import ct_dataset, hu_from_grey, write


def chest_hu(seed: int = 0, size: int = 64) -> np.ndarray:
    """Air outside, soft tissue body, lungs inside it, a bone: what a CT export holds (HU, integers)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    hu = np.full((size, size), -1000.0)
    hu[(yy - size / 2) ** 2 / 0.8 + (xx - size / 2) ** 2 < (size * 0.45) ** 2] = 40
    for cx in (size * 0.32, size * 0.68):
        hu[(yy - size / 2) ** 2 + (xx - cx) ** 2 / 0.5 < (size * 0.22) ** 2] = -850
    hu[size // 2 - 3 : size // 2 + 3, size // 2 - 2 : size // 2 + 2] = 900
    return np.clip(np.round(hu + rng.normal(0, 20, hu.shape)), -1024, 3071)  # a scanner's range


def save_uint16(hu: np.ndarray, path, offset: int = 1024):
    Image.fromarray((hu + offset).astype(np.uint16)).save(path)
    return path


def test_a_16bit_png_of_hu_plus_offset_reads_as_its_dicom_slice_does(tmp_path):
    hu = chest_hu()
    png = save_uint16(hu, tmp_path / "slice.png")
    dcm = write(ct_dataset(hu), tmp_path / "slice.dcm")
    windowed = np.asarray(load_image(png, hu_offset=1024))
    assert np.array_equal(windowed, LUNG.apply(hu))
    assert np.array_equal(windowed, np.asarray(load_image(dcm)))


def test_without_an_offset_a_16bit_file_is_stretched_as_before(tmp_path):
    hu = chest_hu()
    png = save_uint16(hu, tmp_path / "slice.png")
    stretched = np.asarray(load_image(png), dtype=np.float64)
    raw = hu + 1024
    assert np.abs(stretched - np.floor((raw - raw.min()) / (raw.max() - raw.min()) * 255)).max() <= 1
    lung = (hu < -500) & (hu > -1000)
    # the defect the offset mends: stretched, the lungs are nearly black; in the lung window they are mid-grey
    assert stretched[lung].mean() < 40 < 60 < np.asarray(load_image(png, hu_offset=1024))[lung].mean()


@pytest.mark.parametrize(
    ("array", "offset"),
    [
        (lambda hu: (hu + 32768).astype(np.uint16), 32768),  # DeepLesion's convention
        (lambda hu: hu.astype(np.int16), 0),  # signed HU in a TIFF (Pillow mode "I")
        (lambda hu: hu.astype(np.float32), 0),  # float HU
    ],
)
def test_other_stored_forms_give_the_same_pixels(tmp_path, array, offset):
    hu = chest_hu()
    path = tmp_path / "slice.tif"
    Image.fromarray(array(hu)).save(path)
    assert np.array_equal(np.asarray(load_image(path, hu_offset=offset)), LUNG.apply(hu))


def test_stack3_gives_the_three_windows_as_channels(tmp_path):
    hu = chest_hu()
    png = save_uint16(hu, tmp_path / "slice.png")
    img = load_image(png, "rgb", "stack3", hu_offset=1024)
    assert img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.stack([w.apply(hu) for w in STACK3], axis=-1))


def test_a_wrong_offset_is_named_not_read_as_a_blank_slice(tmp_path):
    png = save_uint16(chest_hu(), tmp_path / "slice.png", offset=0 + 32768)
    with pytest.raises(ImageReadError) as caught:
        load_image(png, hu_offset=0)  # HU then 31768..33668: nothing in the lung window
    assert "no pixel inside the lung window after subtracting hu_offset 0" in caught.value.reason
    assert "check the data's hu_offset" in caught.value.reason
    flat = save_uint16(np.full((64, 64), -1000.0), tmp_path / "flat.png")
    with pytest.raises(ImageReadError, match=r"blank image \(every pixel is 24\)"):
        load_image(flat, hu_offset=1024)


def test_an_8bit_file_is_a_display_image_and_is_read_as_it_is(tmp_path):
    path = tmp_path / "slice.png"
    synthetic_slice(0, 1).save(path)
    assert np.array_equal(np.asarray(load_image(path, hu_offset=1024)), np.asarray(load_image(path)))


def test_a_16bit_colour_file_is_refused_with_an_offset_not_read_as_its_top_8_bits(tmp_path):
    import tifffile  # scikit-image's TIFF library: Pillow cannot write 16 bits per colour channel

    raw = np.repeat((chest_hu() + 1024).astype(np.uint16)[..., None], 3, -1)
    tif = tmp_path / "rgb48.tif"
    tifffile.imwrite(tif, raw, photometric="rgb")
    assert np.asarray(Image.open(tif)).max() <= raw.max() >> 8  # what Pillow gives: the top 8 bits, nearly black
    with pytest.raises(ImageReadError, match="16-bit colour image: only its top 8 bits can be read"):
        load_image(tif, hu_offset=1024)
    assert load_image(tif).mode == "L"  # without an offset it is a display image, read as Pillow reads it
    grey = tmp_path / "grey16.tif"
    tifffile.imwrite(grey, raw[..., 0])
    assert np.array_equal(np.asarray(load_image(grey, hu_offset=1024)), LUNG.apply(chest_hu()))


def test_the_offset_is_part_of_the_config_and_of_a_runs_preprocessing():
    with pytest.raises(LungCTError, match=r"config: data: .*hu_offset needs a preset window"):
        parse_config({"data": {"hu_offset": 1024, "dicom_window": "file"}})
    pre = Preprocess(224, (0.5,) * 3, (0.5,) * 3, hu_offset=1024)
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    old = {k: v for k, v in pre.to_dict().items() if k != "hu_offset"}  # a run saved before hu_offset
    assert Preprocess.from_dict(old).hu_offset is None


def _hu_dataset(root, per_class: int = 6):
    """The tiny synthetic dataset as 16-bit PNGs of HU + 1024, whose lung window is the synthetic slice."""
    for k, folder in enumerate(CLASS_FOLDERS):
        (root / folder).mkdir(parents=True)
        for i in range(per_class):
            save_uint16(np.round(hu_from_grey(synthetic_slice(k, 500 + 10 * k + i))), root / folder / f"{i}.png")
    return root


def test_a_run_trained_with_an_offset_predicts_and_skips_with_it(tmp_path, fake_pretrained, capsys):
    data = _hu_dataset(tmp_path / "data")
    save_uint16(chest_hu(), data / CLASS_FOLDERS[0] / "wrong offset.png", offset=32768)  # another export
    raw = tiny_config(data, fake_pretrained).model_dump()
    raw["data"]["hu_offset"] = 1024
    raw["train"]["phase1"]["epochs"] = raw["train"]["phase2"]["epochs"] = 1
    run = train(parse_config(raw), tmp_path / "run", progress=False)
    pre = run.card().preprocess
    assert pre.hu_offset == 1024
    summary = json.loads(run.summary.read_text())
    assert [s["path"] for s in summary["skipped"]] == [str(data / CLASS_FOLDERS[0] / "wrong offset.png")]
    assert "no pixel inside the lung window" in summary["skipped"][0]["reason"]
    slice_png = next((data / CLASS_FOLDERS[1]).glob("*.png"))
    seen = np.asarray(pre.load(slice_png))
    assert np.array_equal(seen, np.asarray(load_image(slice_png, hu_offset=1024)))
    assert main(["predict", "--run", str(run.path), str(slice_png)]) == 0
    assert "error" not in json.loads(capsys.readouterr().out.splitlines()[0])
    assert RunDir(run.path).card().preprocess.hu_offset == 1024


def test_hu_offset_lets_a_model_of_8bit_slices_predict_evaluate_and_explain_exports(tmp_path, fake_pretrained, capsys):
    """A model trained on display images (8-bit, lung window) given the same slice as 16-bit HU + 1024: with
    --hu-offset it sees the very pixels of the 8-bit slice; without, a stretched other picture."""
    from tests.conftest import write_dataset

    cfg = tiny_config(write_dataset(tmp_path / "data", per_class=6), fake_pretrained)
    cfg.train.phase1.epochs = cfg.train.phase2.epochs = 1
    cfg.model.input_size = 64  # Grad-CAM (explain, below) needs a 2x2 last block
    run = train(cfg, tmp_path / "run", progress=False).path
    hu = chest_hu(seed=3)
    save_uint16(hu, tmp_path / "export.png")
    Image.fromarray(LUNG.apply(hu)).save(tmp_path / "display.png")

    def predicted(*argv) -> dict:
        assert main(["predict", "--run", str(run), *argv]) == 0
        return json.loads(capsys.readouterr().out.strip())["probabilities"]

    display = predicted(str(tmp_path / "display.png"))
    assert predicted("--hu-offset", "1024", str(tmp_path / "export.png")) == display
    assert predicted(str(tmp_path / "export.png")) != display  # stretched: the run has no hu_offset of its own
    assert main(["predict", "--run", str(run), "--hu-offset", "32768", str(tmp_path / "export.png")]) == 1  # none read
    line = json.loads(capsys.readouterr().out.strip())
    assert "check the data's hu_offset" in line["error"]  # all air and below for a file of HU + 1024: said

    # evaluate --data and explain take the option too: the exports score and look exactly as their renderings
    for k, folder in enumerate(CLASS_FOLDERS):
        for i in range(2):
            hu = chest_hu(seed=40 + 10 * k + i)
            save_uint16(hu, _mkdir(tmp_path / "exports" / folder) / f"{i}.png")
            Image.fromarray(LUNG.apply(hu)).save(_mkdir(tmp_path / "displays" / folder) / f"{i}.png")
    for name, extra in (("displays", []), ("exports", ["--hu-offset", "1024"])):
        argv = ["evaluate", "--run", str(run), "--data", str(tmp_path / name), "--out", str(tmp_path / f"eval_{name}")]
        assert main([*argv, "--no-track", "-q", *extra]) == 0
        argv = ["explain", "--run", str(run), "--out", str(tmp_path / f"cam_{name}"), str(tmp_path / name), "-q"]
        assert main([*argv, *extra]) == 0
    capsys.readouterr()
    tables = [(tmp_path / f"eval_{n}" / "predictions.csv").read_text() for n in ("displays", "exports")]
    assert tables[0].replace("displays", "exports") == tables[1] and tables[0].count("\n") == 7
    cams = [sorted((tmp_path / f"cam_{n}").rglob("*.npy")) for n in ("displays", "exports")]
    assert len(cams[0]) == len(cams[1]) == 6
    for display_cam, export_cam in zip(*cams, strict=True):
        np.testing.assert_array_equal(np.load(display_cam), np.load(export_cam))


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
