"""Exporting a run for serving: ONNX with a dynamic batch axis, verified against PyTorch (`lungct export`)."""

import lazy_loader

# Submodules load on first use, so `lungct --help` and light commands never pay for torch.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "onnx_export": ["FORMATS", "ServingGraph", "export_onnx"],
        "runtime": ["EXPORT_FILE", "ONNX_FILE", "OnnxModel", "export_status", "read_export_info"],
    },
)
