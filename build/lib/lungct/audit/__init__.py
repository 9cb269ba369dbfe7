"""Data audit: duplicates, look-alike groups, split leakage, label shortcuts and class balance."""

import lazy_loader

# Submodules load on first use, so `lungct --help` and light commands never pay for torch.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "core": ["run_audit"],
    },
)
