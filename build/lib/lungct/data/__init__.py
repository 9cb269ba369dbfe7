"""Data: finding labelled images, checking them, grouping look-alikes, splitting and loading."""

from lungct.data.images import IMAGE_EXTENSIONS, ImageReadError, load_image
from lungct.data.labels import normalise_label
from lungct.data.sources import Sample, collect_samples

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "Sample", "collect_samples", "load_image", "normalise_label"]
