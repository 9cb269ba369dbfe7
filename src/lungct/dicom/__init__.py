"""DICOM input: slices to Hounsfield units and windows, series in slice order (study results: lungct.inference)."""

import lazy_loader

# Submodules load on first use, so `lungct --help` and light commands never pay for torch.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "errors": ["DicomError"],
        "image": ["load_dicom_image"],
        "read": ["has_dicom_preamble", "is_dicom_path", "read_dataset", "read_hu", "slice_id", "to_hu"],
        "series": ["Series", "SeriesSlice", "load_series"],
        "hounsfield": ["BONE", "LUNG", "MEDIASTINAL", "STACK3", "WINDOW_NAMES", "Window", "default_window"],
        "window": ["to_image"],
    },
)
