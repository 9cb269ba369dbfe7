"""Exporting a run for serving: ONNX with a dynamic batch axis, verified against PyTorch, and its INT8 form
checked against float on the test part (`lungct export [--quantize int8]`)."""

import lazy_loader

# Submodules load on first use, so `lungct --help` and light commands never pay for torch.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "onnx_export": ["FORMATS", "ServingGraph", "export_onnx"],
        "quantize": ["quantize_run"],
    },
)
