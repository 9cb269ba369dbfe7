"""Evaluation: metrics, plots and the evaluate command's report."""

from lungct.evaluation.metrics import compute_metrics, expected_calibration_error

__all__ = ["compute_metrics", "expected_calibration_error"]
