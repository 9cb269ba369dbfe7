import io
import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

from lungct.data import images
from lungct.data.images import ImageReadError, load_image, open_image


def _ramp(size=(48, 36)) -> np.ndarray:
    """A grey ramp: a slice with some structure (a blank image is refused)."""
    w, h = size
    return np.linspace(0, 255, w * h).reshape(h, w).astype(np.uint8)


def _png(path, size=(48, 36), mode="L"):
    Image.fromarray(_ramp(size), mode="L").convert(mode).save(path)
    return path


def test_grey_and_rgb_files_load_in_the_requested_mode(tmp_path):
    grey = _png(tmp_path / "g.png")
    rgb = _png(tmp_path / "c.png", mode="RGB")
    assert load_image(grey).mode == "L" and load_image(rgb).mode == "L"
    assert load_image(grey, "rgb").mode == "RGB"
    assert load_image(rgb).size == (48, 36)


def test_16_bit_images_are_rescaled_to_8_bit(tmp_path):
    arr = np.kron(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16), np.ones((16, 16), np.uint16))
    Image.fromarray(arr).save(tmp_path / "deep.png")
    out = np.asarray(load_image(tmp_path / "deep.png"))
    assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"GIF89a-but-not-really", "not a readable image"), (b"\x89PNG\r\n\x1a\n\0\0", "")],
)
def test_bad_files_raise_a_named_reason(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert reason in info.value.reason


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="not a regular file"):
        load_image(tmp_path)
    with pytest.raises(ImageReadError, match="file not found"):
        load_image(tmp_path / "nope.png")


def test_huge_dimensions_are_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="too large"):
        load_image(_png(tmp_path / "big.png", size=(48, 36)))


def test_bytes_from_an_upload_decode_like_files():
    buf = io.BytesIO()
    Image.fromarray(_ramp()).convert("RGB").save(buf, format="JPEG")
    buf.seek(0)
    assert open_image(buf, "upload.jpg").size == (48, 36)


def _float_tiff(path, values):
    """Each value as a 16x16 block, so that the image is large enough to be a slice."""
    blocks = np.kron(np.asarray(values, dtype=np.float32), np.ones((16, 16), np.float32))
    Image.fromarray(blocks, mode="F").save(path, format="TIFF")
    return path


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_float_images_with_non_finite_pixels_are_refused(tmp_path, bad):
    """They used to become a blank (all-zero) slice that the model still labelled with confidence."""
    path = _float_tiff(tmp_path / "scan.tif", [[0.0, 1.0, 2.0], [3.0, bad, 5.0]])
    with pytest.raises(ImageReadError, match="non-finite pixel values") as info:
        load_image(path)
    assert info.value.path == str(path)
    with pytest.raises(ImageReadError, match="non-finite pixel values"):
        open_image(io.BytesIO(path.read_bytes()), "upload.tif")


def test_float_images_spanning_the_whole_float32_range_rescale(tmp_path):
    path = _float_tiff(tmp_path / "wide.tif", [[-3e38, 0.0], [1e38, 3e38]])
    out = np.asarray(load_image(path))
    assert out.min() == 0 and out.max() == 255 and out[0, 16] in (127, 128)


def test_special_files_are_not_regular_files(tmp_path):
    fifo = tmp_path / "slice.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match="not a regular file"):
        load_image(fifo)
    # The DICOM header check used to open the FIFO and block for ever (`lungct predict` hung on it); run in a
    # thread so that a regression fails here instead of hanging the suite.
    answers: list[bool] = []
    thread = threading.Thread(target=lambda: answers.append(images.is_dicom_file(fifo)), daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # unblock the reader: a writer opening and closing the FIFO gives it end-of-file
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert answers == [False]
    assert images.is_dicom_file("/dev/null") is False


def test_images_too_small_to_be_a_slice_are_refused(tmp_path):
    """A 1x1 image or a 4 px strip, stretched to the model's input, used to get a confident label."""
    for size in [(1, 1), (20000, 4), (31, 64)]:
        with pytest.raises(ImageReadError, match=rf"too small \({size[0]}x{size[1]} pixels"):
            load_image(_png(tmp_path / "small.png", size=size))
    assert load_image(_png(tmp_path / "edge.png", size=(32, 32))).size == (32, 32)


@pytest.mark.parametrize("suffix", [".gif", ".tif"])
def test_stacks_of_frames_are_refused_not_read_as_their_first_frame(tmp_path, suffix):
    frames = [Image.fromarray(_ramp() // (k + 1)) for k in range(3)]
    path = tmp_path / f"stack{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="3 frames in one file; give one slice per file"):
        load_image(path)
    frames[0].save(tmp_path / f"one{suffix}")
    assert load_image(tmp_path / f"one{suffix}").size == (48, 36)


@pytest.mark.parametrize(
    ("image", "color", "shown"),
    [
        (Image.new("L", (64, 64), 0), "grey", "every pixel is 0"),
        (Image.new("RGB", (64, 64), (10, 20, 30)), "rgb", "every pixel is (10, 20, 30)"),
        (Image.new("RGB", (64, 64), (10, 20, 30)), "grey", "every pixel is 18"),
        (Image.fromarray(np.full((64, 64), 1234, np.uint16)), "grey", "every pixel is 1234"),
    ],
)
def test_blank_images_are_refused(tmp_path, image, color, shown):
    """The demo model called a black slice malignant with probability 0.85."""
    image.save(tmp_path / "blank.png")
    with pytest.raises(ImageReadError, match=rf"blank image \({re.escape(shown)}\)"):
        load_image(tmp_path / "blank.png", color)
    grey = Image.new("L", (64, 64), 0)
    grey.putpixel((5, 5), 1)  # one pixel of difference is a (poor) image, not a blank one
    assert load_image(_save(grey, tmp_path / "almost.png")).getextrema() == (0, 1)


def _save(image, path):
    image.save(path)
    return path


def test_an_exif_orientation_is_applied_as_viewers_display_it(tmp_path):
    """A phone photo of a viewer is stored sideways with an Orientation tag; it was classified sideways."""
    stored = Image.fromarray(_ramp((64, 40)))  # brightness grows along the rows: the last row is the brightest
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    for name in ("photo.jpg", "photo.png"):
        stored.save(tmp_path / name, exif=exif)
        shown = np.asarray(load_image(tmp_path / name)).astype(int)
        assert shown.shape == (64, 40), name  # 40 x 64 stored, 64 x 40 shown
        assert shown[:, 0].mean() > shown[:, -1].mean() + 100, name  # the brightest row is now the left column
