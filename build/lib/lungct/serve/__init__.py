"""The REST API (`lungct serve`): FastAPI over the Predictor, with hard limits on every upload."""

import lazy_loader

# Submodules load on first use, so `lungct --help` never pays for torch or FastAPI.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "app": ["create_app"],
        "errors": ["ApiError"],
        "openapi": ["openapi_schema", "write_openapi"],
        "settings": ["ServeSettings"],
    },
)
