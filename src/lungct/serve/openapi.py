"""The OpenAPI schema kept in the repository (docs/openapi.json), generated without loading a model."""

from __future__ import annotations

import json
from pathlib import Path

OPENAPI_FILE = Path("docs") / "openapi.json"
REGENERATE = "lungct serve --openapi-out docs/openapi.json"


def openapi_schema() -> dict:
    from lungct.serve.app import create_app

    return create_app(None).openapi()


def openapi_text() -> str:
    return json.dumps(openapi_schema(), indent=2, sort_keys=True) + "\n"


def write_openapi(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(openapi_text(), encoding="utf-8")
    return path
