"""DICOM input: slices to Hounsfield units and windows, series in slice order, study-level results."""

from lungct.dicom.errors import DicomError
from lungct.dicom.image import load_dicom_image
from lungct.dicom.read import has_dicom_preamble, is_dicom_path, read_dataset, read_hu, slice_id, to_hu
from lungct.dicom.series import Series, SeriesSlice, load_series
from lungct.dicom.study import StudyResult, aggregate, predict_series
from lungct.dicom.window import BONE, LUNG, MEDIASTINAL, STACK3, WINDOW_NAMES, Window, default_window, to_image

__all__ = [
    "BONE",
    "LUNG",
    "MEDIASTINAL",
    "STACK3",
    "WINDOW_NAMES",
    "DicomError",
    "Series",
    "SeriesSlice",
    "StudyResult",
    "Window",
    "aggregate",
    "default_window",
    "has_dicom_preamble",
    "is_dicom_path",
    "load_dicom_image",
    "load_series",
    "predict_series",
    "read_dataset",
    "read_hu",
    "slice_id",
    "to_hu",
    "to_image",
]
