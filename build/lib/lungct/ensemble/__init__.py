"""Fold models of a `lungct cv` folder as one deployable run (`lungct ensemble`)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={"build": ["build_ensemble"]})
