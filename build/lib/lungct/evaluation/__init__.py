"""Evaluation: metrics, plots and the evaluate command's report."""

import lazy_loader

# Submodules load on first use, so `lungct --help` and light commands never pay for torch.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "metrics": ["compute_metrics", "expected_calibration_error"],
    },
)
