"""Contract fuzzing: Schemathesis, with every check, against the real uvicorn server on loopback (the `live`
fixture). It generates valid and invalid requests from the served OpenAPI document and checks that the server
answers as the document says: documented status codes, content types, headers and bodies, invalid input
rejected with a 4xx, a 405 with an Allow header for methods a path does not take, and never a 5xx.

Bounded and repeatable: at most 30 examples per operation and phase, a fixed seed, no example database.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# positive_data_acceptance: a request that matches the schema should be accepted. The schema cannot say "bytes
# that decode to an image" (Schemathesis fills `file` with arbitrary bytes as often as with a real PNG), so
# such a request may also get the documented 422 unreadable_image, or 413 for an image over the live server's
# small limits. Every other check runs with its defaults.
CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "413", "422"]

[[operations]]
include-path = "/v1/feedback"
# a schema-valid body names a prediction id the log may not hold: 404 unknown_prediction is that answer
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "422"]
"""

# Schemathesis fills a `format: binary` field with its own 1x1 PNG (or JPEG, GIF...) and arbitrary bytes. The
# server refuses an image under 32 px a side, so without this hook no positive request would reach a prediction
# (and Schemathesis warns of a validation mismatch). Real, small slices are drawn as often as arbitrary bytes.
HOOKS = """\
import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


def slice_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(60, 12, (48, 48)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG")
    return buf.getvalue()


schemathesis.openapi.format("binary", st.one_of(st.integers(0, 2**16).map(slice_png), st.binary(min_size=1)))
"""


def _schemathesis() -> str:
    exe = Path(sys.executable).parent / "schemathesis"
    assert exe.is_file(), "schemathesis is not installed: it is a dev dependency (pip install -e '.[dev]')"
    return str(exe)


def test_the_live_server_keeps_its_openapi_contract(live, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    (tmp_path / "lungct_contract_hooks.py").write_text(HOOKS)
    command = [
        _schemathesis(),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{live.url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "30",
        "--seed",
        "20240611",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "120",
    ]
    try:
        done = subprocess.run(
            command,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "lungct_contract_hooks", "PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"schemathesis did not finish in 900 s:\n{(exc.stdout or '')[-4000:]}")
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-12000:]
    assert "Operations:       6 selected / 6 total" in report, report[-4000:]
    assert "No issues found" in report, report[-4000:]
