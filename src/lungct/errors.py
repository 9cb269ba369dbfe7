"""One exception type for problems a user can fix, so the CLI can print them as one line."""

from __future__ import annotations


class LungCTError(Exception):
    """A problem with the user's input, configuration or files (not a bug in lungct)."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """A library's message (torch, SQLAlchemy, pydantic and onnxruntime spread theirs over lines) as one line of at
    most `limit` characters, for a LungCTError or a log line."""
    return " ".join(str(exc).split())[:limit]


# The optional extra (pyproject.toml) that brings each third-party package lungct imports only on use.
EXTRA_OF_MODULE = {
    **dict.fromkeys(
        (
            "torch",
            "torchvision",
            "timm",
            "safetensors",
            "sklearn",
            "skimage",
            "scipy",
            "matplotlib",
            "imagehash",
            "pytorch_grad_cam",
            "onnx",
            "onnxruntime",
            "onnxscript",
        ),
        "train",
    ),
    "pydicom": "dicom",
    **dict.fromkeys(("fastapi", "uvicorn", "multipart", "python_multipart", "pydantic_settings", "starlette"), "serve"),
    "streamlit": "app",
    **dict.fromkeys(("pynetdicom", "highdicom", "dicomweb_client", "requests"), "pacs"),
    **dict.fromkeys(("mlflow", "optuna", "sqlalchemy"), "mlops"),
}


class MissingExtraError(LungCTError):
    """A job whose optional dependencies are not installed: names the extra that brings them."""

    def __init__(self, extra: str, module: str | None, what: str = "this command"):
        self.extra = extra
        super().__init__(f"{what} needs the '{extra}' extra: pip install 'lungct[{extra}]' (missing: {module})")


def missing_extra(exc: ModuleNotFoundError, what: str = "this command") -> MissingExtraError | None:
    """The MissingExtraError for an import that failed because an extra is not installed, else None."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    return MissingExtraError(extra, top, what) if extra else None
