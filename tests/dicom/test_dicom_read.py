"""Slices to Hounsfield units and windows, on pydicom's own CT_small.dcm and on files built here."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import HTJ2KLossless, JPEGLSLossless

from lungct.data.images import ImageReadError, is_image_file, load_image, open_image
from lungct.dicom import LUNG, MEDIASTINAL, DicomError, load_dicom_image, read_dataset, read_hu, slice_id
from tests.dicom.dicom_factory import MALFORMED, ct_dataset, malformed_dicom, to_bytes, with_raw_value, write

CT_SMALL = get_testdata_file("CT_small.dcm", download=False)
HU = np.array([[-2000, -1350, -600, 150], [1000, -125, 50, 225]], dtype=np.float64)


def test_ct_small_is_shipped_and_converts_to_hu():
    assert CT_SMALL is not None, "pydicom's test data should include CT_small.dcm"
    ds = pydicom.dcmread(CT_SMALL)
    hu = read_hu(CT_SMALL, "CT_small.dcm")
    # CT_small has RescaleSlope 1 and RescaleIntercept -1024.
    np.testing.assert_array_equal(hu, ds.pixel_array.astype(np.float32) - 1024)
    assert (hu.min(), hu.max()) == (-896.0, 1167.0)


def test_ct_small_loads_as_lung_windowed_grey_image():
    img = load_image(CT_SMALL, "grey")
    assert img.mode == "L" and img.size == (128, 128)
    hu = read_hu(CT_SMALL, "x")
    expected = np.floor(np.clip((hu + 1350) / 1500, 0, 1) * 255 + 0.5)
    np.testing.assert_array_equal(np.asarray(img), expected.astype(np.uint8))


def test_slope_and_intercept_give_hu(tmp_path):
    even = np.array([[-2000, -1350, -600, 150], [1000, -124, 50, 224]], dtype=np.float64)  # slope 2 steps
    path = write(ct_dataset(even, slope=2.0, intercept=-1000.0), tmp_path / "a.dcm")
    np.testing.assert_array_equal(read_hu(path, "a.dcm"), even.astype(np.float32))
    assert pydicom.dcmread(path).pixel_array[0, 0] == -500  # stored value, before the modality LUT


def test_window_values(tmp_path):
    path = write(ct_dataset(HU, window=(400, 40)), tmp_path / "a.dcm")
    lung = np.asarray(load_dicom_image(path, "a", "grey", "lung"))
    assert lung.tolist() == [[0, 0, 128, 255], [255, 208, 238, 255]]
    med = np.asarray(load_dicom_image(path, "a", "grey", "mediastinal"))
    assert med.tolist() == [[0, 0, 0, 200], [255, 0, 128, 255]]
    # The file's own window: W400/L40 maps -160..240 to 0..255.
    own = np.asarray(load_dicom_image(path, "a", "grey", "file"))
    assert own.tolist() == [[0, 0, 0, 198], [255, 22, 134, 245]]
    stack = load_dicom_image(path, "a", "grey", "stack3")
    assert stack.mode == "RGB"
    arr = np.asarray(stack)
    np.testing.assert_array_equal(arr[..., 0], lung)
    np.testing.assert_array_equal(arr[..., 1], med)
    assert LUNG.apply(np.array([-600.0]))[0] == 128 and MEDIASTINAL.apply(np.array([50.0]))[0] == 128


def test_rgb_without_a_window_means_three_windows(tmp_path):
    path = write(ct_dataset(np.tile(HU, (16, 8))), tmp_path / "a.dcm")  # 32 x 32: the smallest slice read
    rgb = np.asarray(load_image(path, "rgb"))
    assert rgb.shape == (32, 32, 3)
    assert rgb[0, 2].tolist() == [128, 0, 0]  # -600 HU: mid lung, below mediastinal and bone
    grey_rgb = np.asarray(load_image(path, "rgb", "lung"))
    assert (grey_rgb[..., 0] == grey_rgb[..., 2]).all()


def test_file_window_missing_is_a_clear_error(tmp_path):
    path = write(ct_dataset(HU), tmp_path / "a.dcm")
    with pytest.raises(DicomError, match="no WindowCenter/WindowWidth"):
        load_dicom_image(path, "a.dcm", "grey", "file")


def test_extensionless_and_uploaded_dicom_are_recognised(tmp_path):
    path = write(ct_dataset(np.tile(HU, (16, 8))), tmp_path / "IM0001")
    assert load_image(path).mode == "L"
    assert open_image(io.BytesIO(path.read_bytes()), "upload").size == (32, 32)
    assert is_image_file(tmp_path / "x.dcm")


def test_a_dicom_slice_below_the_smallest_side_is_refused_like_an_image_file(tmp_path):
    """Image files under 32 px a side were refused; a 4 x 2 DICOM slice was scored."""
    path = write(ct_dataset(HU), tmp_path / "tiny.dcm")
    with pytest.raises(ImageReadError, match=r"image too small \(4x2 pixels; a slice needs 32 a side\)"):
        load_image(path)


def test_slice_id_is_a_uid_hash_or_file_name(tmp_path):
    ds = ct_dataset(HU)
    sid = slice_id(ds, "/secret/Doe_Janet/IM1.dcm")
    assert sid.startswith("sop-") and ds.SOPInstanceUID not in sid
    del ds.SOPInstanceUID
    assert slice_id(ds, "/secret/Doe_Janet/IM1.dcm") == "IM1.dcm"


def test_identifying_tags_are_dropped_on_reading(tmp_path):
    ds = ct_dataset(HU)
    ds.add_new(0x00091001, "LO", "Doe private note")
    path = write(ds, tmp_path / "a.dcm")
    assert pydicom.dcmread(path).PatientName == "Doe^Janet^Q"
    kept = read_dataset(path, "a.dcm")
    tags = list(kept.keys())  # tags only: iterating a Dataset would decode every element
    assert not any(t.group == 0x0010 or t.is_private for t in tags)
    assert "InstitutionName" not in kept and "AccessionNumber" not in kept and "Modality" in kept


def test_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is not a DICOM file " * 20)
    with pytest.raises(DicomError, match="not a DICOM file"):
        read_dataset(path, path.name)
    with pytest.raises(ImageReadError, match="not a DICOM file"):
        load_image(path)


def test_no_pixel_data(tmp_path):
    path = write(ct_dataset(HU, pixels=False), tmp_path / "a.dcm")
    with pytest.raises(DicomError, match="has no pixel data"):
        read_dataset(path, "a.dcm")


@pytest.mark.parametrize("photometric", ["PALETTE COLOR", "YBR_FULL", "RGB"])
def test_a_photometric_interpretation_other_than_greyscale_is_refused(tmp_path, photometric):
    """A palette slice's stored values are indices, not HU: it was read as HU and predicted without a word."""
    ds = ct_dataset(HU)
    ds.PhotometricInterpretation = photometric
    path = write(ds, tmp_path / "a.dcm")
    with pytest.raises(DicomError, match=f"photometric interpretation {photometric}; a CT slice is greyscale"):
        read_dataset(path, "a.dcm", force=True)
    ds.PhotometricInterpretation = "MONOCHROME1"  # greyscale, shown inverted: still HU
    assert read_hu(write(ds, tmp_path / "b.dcm"), "b.dcm").shape == HU.shape


def test_modality_other_than_ct_unless_forced(tmp_path):
    path = write(ct_dataset(HU, modality="MR"), tmp_path / "a.dcm")
    with pytest.raises(DicomError, match="modality is MR, not CT"):
        read_dataset(path, "a.dcm")
    with pytest.raises(ImageReadError, match="modality is MR"):
        load_image(path)
    assert read_dataset(path, "a.dcm", force=True).Modality == "MR"


# A compressed syntax that this install cannot decode (the [pacs] extra brings JPEG and JPEG-LS decoders; HTJ2K
# needs pylibjpeg-openjpeg, which no extra installs).
UNDECODABLE = next((s for s in (HTJ2KLossless, JPEGLSLossless) if not get_decoder(s).is_available), None)


@pytest.mark.skipif(UNDECODABLE is None, reason="every compressed syntax tried has a decoder here")
def test_compressed_without_decoder_names_the_package(tmp_path):
    ds = ct_dataset(HU)
    ds.file_meta.TransferSyntaxUID = UNDECODABLE
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7not-really-compressed\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = write(ds, tmp_path / "a.dcm")
    with pytest.raises(DicomError, match=r"compressed transfer syntax .* needs a decoder: install") as info:
        read_dataset(path, "a.dcm")
    assert UNDECODABLE.name in info.value.reason
    missing = get_decoder(UNDECODABLE).missing_dependencies
    assert "pylibjpeg" in info.value.reason and "requires" not in info.value.reason and missing


def test_corrupt_pixel_data(tmp_path):
    ds = ct_dataset(HU)
    ds.PixelData = ds.PixelData[:6]
    path = write(ds, tmp_path / "a.dcm")
    with pytest.raises(ImageReadError, match=r"pixel data cannot be decoded: .*less than expected \(6 vs 16 bytes\)"):
        load_image(path)


def test_an_invalid_bits_allocated_is_named(tmp_path):
    """It said only "pixel data cannot be decoded (ValueError)"; pydicom's own check names the element."""
    ds = ct_dataset(HU)
    ds.BitsAllocated = 12
    path = write(ds, tmp_path / "a.dcm")
    with pytest.raises(ImageReadError, match=r"cannot be decoded: .*'Bits Allocated' value of '12' is invalid") as info:
        load_image(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("keep", [140, 200, 400])
def test_a_file_cut_short_before_its_pixels_says_it_may_be_truncated(tmp_path, keep):
    """pydicom reads a truncated file without complaint; the error said only "has no pixel data"."""
    data = write(ct_dataset(HU), tmp_path / "a.dcm").read_bytes()
    with pytest.raises(DicomError, match=r"has no pixel data \(.*truncated"):
        read_dataset(data[:keep], "a.dcm")


def test_a_non_image_object_without_pixels_is_not_called_truncated(tmp_path):
    ds = ct_dataset(HU, pixels=False)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    path = write(ds, tmp_path / "a.dcm")
    with pytest.raises(DicomError, match=r"has no pixel data$"):
        read_dataset(path, "a.dcm")


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_values_and_structures_are_a_clear_error(tmp_path, kind):
    """Issue 12: RescaleSlope "abc", NumberOfFrames "abc" and a 5000-deep sequence raised ValueError,
    UFuncTypeError and RecursionError (a 500 in the API); each must be one DicomError / ImageReadError."""
    data = malformed_dicom(kind)
    with pytest.raises(DicomError, match=MALFORMED[kind]) as info:
        load_dicom_image(data, "bad.dcm")
    assert info.value.name == "bad.dcm" and "\n" not in str(info.value)
    with pytest.raises(ImageReadError, match=MALFORMED[kind]):
        open_image(io.BytesIO(data), "bad.dcm")
    path = tmp_path / "bad.dcm"
    path.write_bytes(data)
    with pytest.raises(ImageReadError, match=MALFORMED[kind]):
        load_image(path)


def test_non_numeric_file_window_is_a_clear_error(tmp_path):
    ds = with_raw_value(ct_dataset(HU, window=(400, 40)), "WindowWidth", "DS", b"wide")
    path = tmp_path / "a.dcm"
    path.write_bytes(to_bytes(ds))
    with pytest.raises(DicomError, match="WindowCenter/WindowWidth that is not a number"):
        load_dicom_image(path, "a.dcm", "grey", "file")
    assert load_dicom_image(path, "a.dcm", "grey", "lung").size == (4, 2)  # other windows do not need it


def test_a_blank_dicom_slice_is_refused_like_a_blank_image(tmp_path):
    """A slice of air alone (-1000 HU everywhere) windows to one grey level; the model would still label it."""
    path = write(ct_dataset(np.full((64, 64), -1000.0)), tmp_path / "air.dcm")
    with pytest.raises(ImageReadError, match=r"air\.dcm: blank image \(every pixel is \d+\)"):
        load_image(path)
    with pytest.raises(ImageReadError, match="blank image"):
        open_image(io.BytesIO(path.read_bytes()), "upload")
    hu = np.full((64, 64), -1000.0)
    hu[20:30, 20:30] = 40.0  # a soft-tissue patch: a slice with something in it
    low, high = load_image(write(ct_dataset(hu), tmp_path / "nodule.dcm")).getextrema()
    assert low < high
