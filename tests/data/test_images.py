import io

import numpy as np
import pytest
from PIL import Image

from lungct.data import images
from lungct.data.images import ImageReadError, load_image, open_image


def _png(path, size=(40, 30), mode="L"):
    Image.fromarray(np.zeros(size[::-1], dtype=np.uint8), mode="L").convert(mode).save(path)
    return path


def test_grey_and_rgb_files_load_in_the_requested_mode(tmp_path):
    grey = _png(tmp_path / "g.png")
    rgb = _png(tmp_path / "c.png", mode="RGB")
    assert load_image(grey).mode == "L" and load_image(rgb).mode == "L"
    assert load_image(grey, "rgb").mode == "RGB"
    assert load_image(rgb).size == (40, 30)


def test_16_bit_images_are_rescaled_to_8_bit(tmp_path):
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
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
    with pytest.raises(ImageReadError, match="not a file"):
        load_image(tmp_path)
    with pytest.raises(ImageReadError, match="file not found"):
        load_image(tmp_path / "nope.png")


def test_huge_dimensions_are_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="too large"):
        load_image(_png(tmp_path / "big.png", size=(40, 30)))


def test_bytes_from_an_upload_decode_like_files():
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 20, 30)).save(buf, format="JPEG")
    buf.seek(0)
    assert open_image(buf, "upload.jpg").size == (8, 6)
